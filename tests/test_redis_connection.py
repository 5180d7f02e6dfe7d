"""How Beagle reaches Redis (app/redis_connection.py) and how a request rides out a master
going away (`failed_over` in app/web/dispatch.py), without a Sentinel: the settings' shapes, what
each client is given, the retry policy's bounds, and which of real Redis's errors mean the
master changed."""

import subprocess
import threading
import time

import pytest
import redis
from flask import g
from helpers import wait_for

from app.redis_connection import (
    connect,
    master_changed,
    redis_url,
    sentinel_addresses,
    sentinel_for,
    url_password,
)
from app.web import create_app
from app.web.dispatch import failed_over
from tools.devstack import free_port


def test_sentinel_addresses_parse_hosts_ports_and_ipv6():
    assert sentinel_addresses(" 10.0.0.5:26380, 10.0.0.6:26380,,[fd00::7]:26381 ") == [
        ("10.0.0.5", 26380),
        ("10.0.0.6", 26380),
        ("fd00::7", 26381),
    ]
    assert sentinel_addresses("") == []


def test_a_role_url_carries_user_password_and_tls_ca_quoted():
    url = redis_url("web", "p@ss/:w%rd", "fd00::5", 6380, tls_ca="/etc/beagle/tls/ca 1.pem")
    assert url.startswith("rediss://web:") and "@[fd00::5]:6380/0?ssl_ca_certs=" in url
    assert url_password(url) == "p@ss/:w%rd"
    assert redis_url("admin", "x", "127.0.0.1", 6380).startswith("redis://admin:x@127.0.0.1")


def test_sentinels_and_the_master_get_the_urls_login_and_tls():
    url = redis_url("worker", "secret", "ignored", 6380, tls_ca="/ca.pem")
    sentinel = sentinel_for(url, "10.0.0.5:26380,10.0.0.6:26380")
    first = sentinel.sentinels[0].connection_pool.connection_kwargs
    assert (first["host"], first["port"]) == ("10.0.0.5", 26380)
    assert first["username"] == "worker" and first["password"] == "secret"
    assert first["ssl_ca_certs"] == "/ca.pem" and first["socket_connect_timeout"] == 1.0
    master = sentinel.connection_kwargs
    assert master["username"] == "worker" and master["password"] == "secret"
    assert master["ssl"] is True and master["ssl_ca_certs"] == "/ca.pem"
    assert "host" not in master  # the Sentinels say where the master is


def test_one_redis_retries_a_stale_connection_once_sentinel_never_behind_the_caller():
    one = connect("redis://127.0.0.1:1/0", 2.0)
    assert one.get_retry()._retries == 1
    many = connect("redis://u:p@x:1/0", 2.0, sentinels="127.0.0.1:1", master="beagle")
    assert many.get_retry()._retries == 0
    with pytest.raises(redis.ConnectionError):
        one.ping()  # nothing listens on port 1: refused at once, not after a timeout


@pytest.fixture
def request_context():
    app = create_app({"request_timeout": 0.6, "redis_url": "redis://127.0.0.1:1/0"})
    with app.test_request_context("/predict"):
        g.started = time.time()
        yield


def test_failed_over_tries_again_after_dropped_connections_until_one_succeeds(request_context):
    calls = []

    def step():
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise redis.ConnectionError("Connection closed by server.")

    failed_over(step)
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
    assert len(calls) == 4 and gaps == sorted(gaps)  # backing off: 0.1, 0.2, 0.4 s
    assert gaps[-1] < 1.0  # never more than FAILOVER_BACKOFF_S, plus this machine's noise


def test_failed_over_gives_up_with_the_error_at_the_requests_deadline(request_context):
    began = time.monotonic()

    def step():
        raise redis.TimeoutError("Timeout connecting to server")

    with pytest.raises(redis.TimeoutError):
        failed_over(step)
    assert 0.5 <= time.monotonic() - began < 1.6  # the 0.6 s deadline, plus one backoff


def test_failed_over_lets_other_errors_through_at_once(request_context):
    calls = []

    def step():
        calls.append(1)
        raise redis.ResponseError("NOGROUP No such key")

    with pytest.raises(redis.ResponseError):
        failed_over(step)
    assert calls == [1]


def plain_redis(tmp_path, name):
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(tmp_path), "--dbfilename", f"{name}.rdb"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=5)

    def answers():
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    wait_for(answers, 10, f"redis {name}'s start")
    return process, client, port


@pytest.mark.parametrize("wait_in", ["a command", "a pipeline"])
def test_a_master_stepping_down_mid_wait_counts_as_the_master_changed(tmp_path, wait_in):
    """What a planned switchover does to a wait on the old master: Redis ends it with
    UNBLOCKED (a ResponseError, not a dropped connection) — the web tier then queues the
    request again and a worker reads on, rather than a 503 or a crash. A worker waits at
    the end of the pipeline that sends its answers, and redis-py words a pipeline's error
    as its own ("Command # 2 (...) of pipeline caused error: UNBLOCKED ...")."""
    old, old_client, _ = plain_redis(tmp_path, "old")
    new, _, new_port = plain_redis(tmp_path, "new")
    try:
        caught = []

        def wait():
            try:
                if wait_in == "a pipeline":
                    pipe = old_client.pipeline(transaction=False)
                    pipe.lpush("beagle:result:y", "answer")
                    pipe.blpop(["beagle:result:x"], timeout=4)
                    pipe.execute()
                else:
                    old_client.blpop(["beagle:result:x"], timeout=4)
            except redis.RedisError as exc:
                caught.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        admin = redis.Redis(port=old_client.connection_pool.connection_kwargs["port"])
        wait_for(lambda: admin.info("clients")["blocked_clients"] == 1, 5, "the wait")
        admin.replicaof("127.0.0.1", new_port)
        waiter.join(6)
        assert caught and isinstance(caught[0], redis.ResponseError), caught
        assert master_changed(caught[0])
        assert master_changed(redis.ConnectionError("Connection closed by server."))
        assert not master_changed(redis.ResponseError("NOGROUP No such key"))
    finally:
        for process in (old, new):
            process.kill()
            process.wait()
