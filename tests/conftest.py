"""Fixtures: a private redis-server, settings with their own key prefix, whole stacks.

Everything is real: redis-server, Apache with mod_wsgi, worker processes running
TensorFlow. Each test's settings get a fresh key prefix, so tests sharing one
redis-server never see each other's keys.
"""

import base64
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
import requests

from app import config
from app.config import PROJECT_ROOT
from tools.devstack import RedisServer, Stack, free_port

SAMPLES = PROJECT_ROOT / "stress" / "images"


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


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    """An SSH key pair for the deploy tests' operator."""
    key = tmp_path_factory.mktemp("ssh") / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free port, configured as in production."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def public_tmp():
    path = public_tempdir("beagle-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(redis_server):
    return make_settings(redis_server.url)


@pytest.fixture
def client(redis_server):
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def start_stack(redis_server):
    """Start stacks with chosen settings and workers; all are stopped after the test."""
    started = []

    def start(workers=1, worker_env=None, **overrides):
        run_dir = public_tempdir("beagle-test-")
        stack = Stack(make_settings(redis_server.url, **overrides), run_dir, workers, worker_env)
        started.append(stack)
        return stack.start()

    yield start
    for stack in started:
        stack.stop()
        shutil.rmtree(stack.run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(redis_server):
    """One shared stack serving the bundled model, for tests that do not disturb it."""
    run_dir = public_tempdir("beagle-test-")
    shared = Stack(make_settings(redis_server.url, web_processes=2), run_dir).start()
    yield shared
    shared.stop()
    shutil.rmtree(run_dir, ignore_errors=True)


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
