"""What Beagle's own clients send again (tools/client.py), against a loopback server that
answers as Apache does in a graceful restart, in an order the test chooses."""

import http.server
import threading
import time

import pytest
import urllib3

from tools import client

URL_PATH = "/predict"


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the server's next step: "drop" closes the connection without
    a word (Apache closing a keep-alive connection), "apache" is Apache's own 503 (no
    X-Request-ID; "apache:V" with Retry-After V, else 0), "app503" the app's 503, "ok" the
    app's 200."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        step = self.server.steps.pop(0)
        self.server.seen.append(step)
        if step == "drop":
            self.close_connection = True
            return
        status, headers = (200, {"X-Request-ID": "r1"}) if step == "ok" else (503, {})
        if step.startswith("apache"):
            headers["Retry-After"] = step.partition(":")[2] or "0"
        elif step == "app503":
            headers["X-Request-ID"] = "r1"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.steps, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def post(server, steps):
    server.steps[:] = steps
    server.seen.clear()
    url = f"http://127.0.0.1:{server.server_port}{URL_PATH}"
    return client.post_image(client.connections(), url, b"image", timeout=5)


def test_a_dropped_connection_then_apaches_503_is_sent_a_third_time(scripted):
    # A graceful restart can do both to one request: the old child closes the keep-alive
    # connection, and the resend arrives while mod_wsgi recreates its socket.
    response, retried = post(scripted, ["drop", "apache", "ok"])
    assert (response.status, retried) == (200, True)
    response, retried = post(scripted, ["apache", "drop", "ok"])
    assert (response.status, retried) == (200, True)


def test_each_cause_is_sent_again_once_only(scripted):
    response, retried = post(scripted, ["apache", "apache", "ok"])
    assert (response.status, retried, scripted.seen) == (503, True, ["apache", "apache"])
    with pytest.raises(urllib3.exceptions.ProtocolError):
        post(scripted, ["drop", "drop", "ok"])
    assert scripted.seen == ["drop", "drop"]
    with pytest.raises(urllib3.exceptions.ProtocolError):
        post(scripted, ["drop", "apache", "drop", "ok"])
    assert len(scripted.seen) == 3
    response, retried = post(scripted, ["apache", "drop", "apache", "ok"])
    assert (response.status, retried, len(scripted.seen)) == (503, True, 3)


def test_an_answer_from_the_app_is_never_sent_again(scripted):
    response, retried = post(scripted, ["ok"])
    assert (response.status, retried) == (200, False)
    response, retried = post(scripted, ["app503", "ok"])
    assert (response.status, retried, scripted.seen) == (503, False, ["app503"])


def test_retry_after_is_kept_within_bounds(scripted):
    # Not a number of seconds: resent at once, as a Retry-After of 0.
    for odd in ("Wed, 21 Oct 2026 07:28:00 GMT", "-5"):
        started = time.monotonic()
        response, retried = post(scripted, [f"apache:{odd}", "ok"])
        assert (response.status, retried) == (200, True)
        assert time.monotonic() - started < client.MAX_RETRY_AFTER_S
    started = time.monotonic()
    response, _ = post(scripted, ["apache:30", "ok"])
    waited = time.monotonic() - started
    assert response.status == 200
    assert client.MAX_RETRY_AFTER_S <= waited < 2 * client.MAX_RETRY_AFTER_S  # capped
