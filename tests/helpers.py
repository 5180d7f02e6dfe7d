"""What the tests share, besides fixtures (tests/conftest.py): settings for a test,
sample images, requests to a stack, polls on Redis, Apache's processes and /metrics.

No test module imports another; they import from here.
"""

import base64
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from app import config
from app.config import PROJECT_ROOT
from app.keys import GROUP, Keys
from app.queue import Request
from tools.devstack import free_port

SAMPLES = PROJECT_ROOT / "stress" / "images"
TEST_PREFIXES = "test*"  # each test's key prefix is test<hex>: the test Redis's ACLs match it


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.05):
    """Poll ``check`` until it returns something true, which is returned; fail after
    ``timeout`` seconds, saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(every)


def make_settings(redis_url, **overrides):
    """Defaults (never the caller's BEAGLE_* environment) plus ``overrides``."""
    values = {
        "redis_url": redis_url,
        "key_prefix": f"test{secrets.token_hex(4)}",
        "port": free_port(),
        "web_processes": 1,
        **overrides,
    }
    return config.load({}, **values)


def sample(digit):
    return (SAMPLES / f"digit_{digit}.png").read_bytes()


def public_tempdir(prefix):
    """A temp dir Apache's daemon user can traverse (pytest's own are mode 700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def wait_result(queue, request_id, timeout):
    """The answer for ``request_id``, or None if none arrived within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    answers = queue.wait_results([request_id], lambda: deadline - time.monotonic())
    return answers[0] if answers else None


def predict(url, data, content_type="multipart", timeout=30, **params):
    """POST ``data`` to /predict the three ways the API accepts; the response."""
    if content_type == "multipart":
        return requests.post(
            url + "/predict", files={"image": ("image", data)}, data=params, timeout=timeout
        )
    if content_type == "json":
        return requests.post(
            url + "/predict",
            timeout=timeout,
            json={"image": base64.b64encode(data).decode(), **params},
        )
    return requests.post(
        url + "/predict",
        data=data,
        params=params,
        timeout=timeout,
        headers={"Content-Type": content_type} if content_type else {},
    )


def daemon_pids(apache_pid):
    """mod_wsgi daemon processes (display-name "(wsgi:...)") started by this Apache."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == apache_pid and cmdline.startswith(b"(wsgi:"):
            pids.append(int(stat.parent.name))
    return pids


def scrape(url):
    """{(metric sample name, frozenset of labels): value} from /metrics."""
    response = requests.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def metric_value(samples, name, **labels):
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def submit(queue, model, count, shape, timeout_s=30.0):
    ids = []
    for _ in range(count):
        request = Request(
            uuid.uuid4().hex, int(timeout_s * 1000), 1, shape, bytes(shape[0] * shape[1] * shape[2])
        )
        queue.submit(model, None, [request], 100, 60)
        ids.append(request.request_id)
    return ids


def wait_queued(client, settings, count, timeout=10, model="digits"):
    """Wait until the model's stream holds ``count`` entries, taken by a worker or not."""
    stream = Keys(settings.key_prefix).stream(model)
    wait_for(lambda: client.xlen(stream) == count, timeout, f"{count} requests queued")


def wait_pending(client, stream, count, timeout=60):
    for _ in range(int(timeout / 0.05)):
        if client.xpending(stream, GROUP)["pending"] == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} entries never became pending")
