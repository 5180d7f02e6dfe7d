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
from xdist.scheduler import LoadScopeScheduling

from tools.devstack import RedisServer, Stack

# make test runs the suite in two processes (pytest-xdist). These modules deploy to this
# machine or make hosts of its files (tests/overlay_hosts.py): they take turns in one process.
THIS_MACHINE = ("tests/test_provisioning.py", "tests/test_failover_hosts.py")


class ByModule(LoadScopeScheduling):
    """Hands out whole modules, as their tests share fixtures, in the order collected."""

    def _split_scope(self, nodeid):
        module = nodeid.split("::", 1)[0]
        return "this machine" if module in THIS_MACHINE else module


def pytest_xdist_make_scheduler(config, log):
    config.option.loadscopereorder = False  # keep the order below, not "most tests first"
    return ByModule(config, log)


def pytest_collection_modifyitems(items):
    """The modules marked `deploys` first: they take minutes a test, so the quick ones fill
    in around them instead of waiting behind them at the end."""
    items.sort(key=lambda item: item.get_closest_marker("deploys") is None)


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
