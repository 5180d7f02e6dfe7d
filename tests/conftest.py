"""Fixtures: a private redis-server, settings with their own key prefix, whole stacks.

Everything is real: redis-server, Apache with mod_wsgi, worker processes running
TensorFlow. Each test's settings get a fresh key prefix, so tests sharing one
redis-server never see each other's keys.
"""

import shutil
import subprocess

import pytest
import redis
from helpers import TEST_PREFIXES, make_settings, public_tempdir

from tools.devstack import RedisServer, Stack


@pytest.fixture(scope="session")
def client_key(tmp_path_factory):
    """An SSH key pair for the deploy tests' operator."""
    key = tmp_path_factory.mktemp("ssh") / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free port, configured as in production, for every
    test's key prefix (test<hex>), with an inspector user for the tests themselves."""
    server = RedisServer(
        tmp_path_factory.mktemp("redis"), key_prefix=TEST_PREFIXES, inspector=True
    ).start()
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
    # Above the longest wait for an answer in any test: redis-py's default (5 s) cut those
    # waits short on a slow host.
    return redis.Redis.from_url(redis_server.url, socket_timeout=150)


@pytest.fixture
def start_stack(redis_server):
    """Start stacks with chosen settings and workers; all are stopped after the test."""
    started = []

    def start(workers=1, worker_env=None, **overrides):
        run_dir = public_tempdir("beagle-test-")
        settings = make_settings(redis_server.url, **overrides)
        stack = Stack(settings, run_dir, workers, worker_env, redis_server.role_urls)
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
    settings = make_settings(redis_server.url, web_processes=2)
    shared = Stack(settings, run_dir, role_urls=redis_server.role_urls).start()
    yield shared
    shared.stop()
    shutil.rmtree(run_dir, ignore_errors=True)
