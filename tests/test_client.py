"""What Beagle's own clients send again (tools/client.py), against a loopback server that
answers as Apache does in a graceful restart, in an order the test chooses."""

import http.server
import threading

import pytest
import urllib3

from tools import client

URL_PATH = "/predict"


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the server's next step: "drop" closes the connection without
    a word (Apache closing a keep-alive connection), "apache" is Apache's own 503 (no
    X-Request-ID), "ok" is the app's 200."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        step = self.server.steps.pop(0)
        self.server.seen.append(step)
        if step == "drop":
            self.close_connection = True
            return
        status, headers = (503, {"Retry-After": "0"}) if step == "apache" else (200, {})
        if step == "ok":
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
    assert (response.status, retried) == (503, True)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        post(scripted, ["drop", "drop", "ok"])
    assert scripted.seen == ["apache", "apache", "drop", "drop"]
