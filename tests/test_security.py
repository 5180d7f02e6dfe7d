"""Security: Redis locked down as rendered, API keys, secrets kept out of logs, Apache
hardening."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import redis
import requests
from helpers import predict, public_tempdir, sample, wait_for

from app import config
from app.config import PROJECT_ROOT
from app.keys import Keys
from provisioning import config_files
from tools.devstack import RedisServer

# What each role's Redis user must be refused (provisioning/redis_users.py), {p} being
# Beagle's key prefix: another application's keys, listing and deleting keys, forging an
# answer, flushing scripts, functions or the database, reconfiguring the server.
EVERYONE = [
    ("GET", "other-app:key"),
    ("SET", "other-app:key", "x"),
    ("DEL", "other-app:key"),
    ("KEYS", "*"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("FUNCTION", "FLUSH"),
    ("SCRIPT", "FLUSH"),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "0"),
    ("ACL", "SETUSER", "default", "on", "+@all"),
    ("REPLICAOF", "10.9.9.9", "6379"),
    ("SHUTDOWN",),
    ("SAVE",),
    ("DEBUG", "SLEEP", "0"),
    ("MODULE", "LOAD", "/tmp/x.so"),
    ("MONITOR",),
    ("CLIENT", "KILL", "TYPE", "normal"),
]
REFUSED = {
    "web": EVERYONE
    + [
        ("SCAN", "0"),
        ("DEL", "{p}:stream:m"),
        ("UNLINK", "{p}:stream:m"),
        ("GET", "{p}:models"),
        ("SET", "{p}:result:someone", "forged"),
        ("LPUSH", "{p}:result:someone", "forged"),
        ("LPUSH", "{p}:stream:new", "x"),
        ("EVAL", "return 1", "1", "{p}:result:someone"),
        ("EVAL", "return redis.call('LPUSH', KEYS[2], 'x')", "2", "{p}:refused:r", "{p}:result:r"),
        ("EVAL", "return redis.call('LPUSH', 'beagle:result:r', 'x')", "1", "{p}:refused:r"),
        ("EXPIRE", "{p}:result:someone", "0"),
        ("EXPIRE", "{p}:stream:m", "0"),
        ("XREADGROUP", "GROUP", "workers", "w", "STREAMS", "{p}:stream:m", ">"),
        ("XADD", "other-app:stream", "*", "f", "v"),
        ("HSET", "{p}:model:m", "w", "{}"),
    ],
    "worker": EVERYONE
    + [
        ("SCAN", "0"),
        ("XADD", "{p}:stream:m", "*", "id", "forged"),
        ("DEL", "{p}:stream:m"),
        ("EXPIRE", "{p}:stream:m", "0"),
        ("BLPOP", "{p}:result:someone", "0.01"),
        ("GET", "{p}:result:someone"),
    ],
    "admin": EVERYONE + [("XADD", "{p}:stream:m", "*", "id", "forged")],
}
# And a little of what each may do, so the refusals are not just a user that can do nothing.
ALLOWED = {
    "web": [
        ("XLEN", "{p}:stream:m"),
        ("SMEMBERS", "{p}:models"),
        ("PING",),
        ("EVAL", "return 1", "2", "{p}:stream:m", "{p}:refused:r"),
        ("LPUSH", "{p}:refused:r", "full"),
        ("BLPOP", "{p}:result:r", "{p}:refused:r", "0.01"),
    ],
    "worker": [("XPENDING", "{p}:stream:m", "workers"), ("SET", "{p}:worker:w", "{}"), ("INFO",)],
    "admin": [("SCAN", "0"), ("XLEN", "{p}:stream:m"), ("DEL", "{p}:result:x"), ("INFO",)],
}


def test_each_redis_role_may_do_its_job_and_nothing_more():
    server = RedisServer(public_tempdir("beagle-redis-")).start()
    try:
        anonymous = redis.Redis(port=server.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()  # the default user is off
        setup = redis.Redis.from_url(server.url_for("worker"))
        setup.xgroup_create("beagle:stream:m", "workers", id="0", mkstream=True)
        printed = []
        for role, refused in REFUSED.items():
            client = redis.Redis.from_url(server.url_for(role))
            for command in refused:
                command = [part.replace("{p}", "beagle") for part in command]
                with pytest.raises(redis.ResponseError) as caught:
                    client.execute_command(*command)
                assert any(
                    why in str(caught.value)
                    for why in ("permission", "not allowed", "can't access")
                ), (
                    role,
                    command,
                    caught.value,
                )
            for command in ALLOWED[role]:
                client.execute_command(*[part.replace("{p}", "beagle") for part in command])
            printed.append(f"{role} refused: {' | '.join(' '.join(c[:2]) for c in refused)}")
        print("\n" + "\n".join(printed))
        text = (server.work_dir / "redis.conf").read_text()
        assert "user default off\n" in text
        assert not any(password in text for password in server.passwords.values())
        assert oct((server.work_dir / "redis.conf").stat().st_mode & 0o777) == "0o600"
    finally:
        server.stop()


def test_the_documented_redis_cli_lines_show_and_flush_beagles_queue_only(tmp_path):
    """docs/operations.md's redis-cli lines, run as written, as the admin user."""
    doc = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    lines = doc.split("### Redis from the command line")[1].split("```sh\n")[1].split("```")[0]
    server = RedisServer(public_tempdir("beagle-redis-"), inspector=True).start()
    try:
        (tmp_path / "admin.env").write_text(f"BEAGLE_REDIS_URL='{server.url_for('admin')}'\n")
        inspector = redis.Redis.from_url(server.url)
        inspector.xgroup_create("beagle:stream:digits", "workers", id="0", mkstream=True)
        for _ in range(3):
            inspector.xadd("beagle:stream:digits", {"id": "x"})
        inspector.set("other-app:key", "keep me")
        env = {"PATH": os.environ["PATH"], "ETC": str(tmp_path), "PORT": str(server.port)}
        shown = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", lines],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines() == ["beagle:stream:digits 3"]
        assert inspector.xlen("beagle:stream:digits") == 0
        assert inspector.xinfo_groups("beagle:stream:digits")[0]["name"] == b"workers"
        assert inspector.get("other-app:key") == b"keep me"
        assert server.passwords["admin"] not in lines
    finally:
        server.stop()


def test_redis_config_for_several_hosts_binds_the_private_address_and_speaks_tls_only():
    tls = config_files.RedisTLS("/e/redis.pem", "/e/redis.key", "/e/ca.pem")
    text = config_files.redis_conf({"web": "s3cret"}, bind="10.20.0.1", port=6380, tls=tls)
    assert "bind 10.20.0.1\n" in text and "user web reset on #" in text and "s3cret" not in text
    assert "port 0\ntls-port 6380\n" in text and "tls-ca-cert-file /e/ca.pem\n" in text
    assert "protected-mode yes\n" in text and "maxmemory-policy noeviction\n" in text
    assert "port 6380\n" in config_files.redis_conf({"web": "s3cret"}, port=6380)
    with pytest.raises(ValueError, match="password"):
        config_files.redis_conf({"web": ""})


def test_a_full_redis_refuses_admission_instead_of_evicting(redis_server):
    server = RedisServer(public_tempdir("beagle-redis-"), maxmemory="4mb").start()
    try:
        client = redis.Redis.from_url(server.url_for("web"))
        with pytest.raises(redis.ResponseError, match="used memory > 'maxmemory'"):
            for _ in range(100):
                client.xadd("beagle:stream:m", {"pixels": b"x" * 100_000})
        assert client.xlen("beagle:stream:m") > 0  # nothing evicted
    finally:
        server.stop()


API_KEYS = ("alpha-7f3e9c1d2b-4a5e6f708192a3b4c5d6", "beta-0a8d6e4f51-9f8e7d6c5b4a39281706")


@pytest.fixture
def keyed_stack(start_stack):
    return start_stack(api_keys=",".join(API_KEYS))


def test_api_keys_guard_predict_but_not_health(keyed_stack):
    url = keyed_stack.url
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + API_KEYS[0]},
        {"Authorization": "Bearer " + API_KEYS[0][:-1]},
    ):
        response = requests.post(url + "/predict", files={"image": sample(3)}, headers=headers)
        assert response.status_code == 401 and response.json()["success"] is False
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert API_KEYS[0] not in response.text
    for key in API_KEYS:
        response = requests.post(
            url + "/predict", files={"image": sample(3)}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.json()["predictions"][0]["label"] == "3"
    assert requests.get(url + "/healthz").status_code == 200
    assert requests.get(url + "/readyz").status_code == 200


def test_api_keys_shorter_than_32_characters_are_refused():
    with pytest.raises(ValueError, match="keys need 32 or more"):
        config.load({"BEAGLE_API_KEYS": f"{API_KEYS[0]},short-key"})
    assert config.load({"BEAGLE_API_KEYS": API_KEYS[0]}).api_keys == (API_KEYS[0],)


def test_status_needs_an_admin_network_or_a_key_and_401s_are_counted(start_stack, client):
    stack = start_stack(api_keys=",".join(API_KEYS), admin_networks="10.99.0.0/16")
    assert requests.get(stack.url + "/status").status_code == 401
    assert requests.post(stack.url + "/predict", files={"image": sample(3)}).status_code == 401
    keyed = requests.get(stack.url + "/status", headers={"Authorization": f"Bearer {API_KEYS[1]}"})
    assert keyed.status_code == 200 and keyed.json()["models"][0]["name"] == "digits"
    counters = Keys(stack.settings.key_prefix).metrics("counters")
    counted = wait_for(
        lambda: client.hgetall(counters).get(b"unauthorized|endpoint=admin.status"),
        5,
        "the 401s counted",
    )
    assert counted == b"1"
    assert client.hget(counters, "unauthorized|endpoint=api.predict") == b"1"


def tool(*args, keys=None, timeout=120):
    """Run one of Beagle's tools as an operator does, with BEAGLE_API_KEYS as a host's env
    file sets it (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != "BEAGLE_API_KEYS"}
    if keys:
        env["BEAGLE_API_KEYS"] = keys
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_beagles_own_tools_send_a_key_when_keys_are_on(keyed_stack, tmp_path):
    url, keys = keyed_stack.url, ",".join(API_KEYS)
    stress = [
        "-m",
        "stress.stress_test",
        "--url",
        url + "/predict",
        "--requests",
        40,
        "--concurrency",
        4,
        "--json",
    ]
    from_env = tool(*stress, keys=keys)
    assert json.loads(from_env.stdout)["statuses"] == {"200": 40}, from_env.stderr
    explicit = tool(*stress, "--api-key", API_KEYS[1])
    assert json.loads(explicit.stdout)["statuses"] == {"200": 40}
    without = tool(*stress)
    assert without.returncode == 1 and json.loads(without.stdout)["statuses"] == {"401": 40}

    simple = tool("-m", "scripts.simple_request", "--url", url, keys=keys)
    assert simple.returncode == 0 and simple.stdout.startswith("1. 7: "), simple.stderr
    refused = tool("-m", "scripts.simple_request", "--url", url)
    assert refused.returncode == 1 and "error 401" in refused.stderr

    locust = tool(
        "-m",
        "locust",
        "-f",
        "stress/locustfile.py",
        "--host",
        url,
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "-t",
        "3s",
        "--only-summary",
        "--csv",
        tmp_path / "l",
        keys=keys,
    )
    assert locust.returncode == 0, locust.stderr[-2000:]
    with open(tmp_path / "l_stats.csv") as stats:
        row = next(r for r in csv.DictReader(stats) if r["Name"] == "/predict")
    assert int(row["Request Count"]) > 10 and int(row["Failure Count"]) == 0


def test_secrets_never_reach_the_logs(keyed_stack, redis_server):
    url = keyed_stack.url
    requests.post(
        url + "/predict",
        files={"image": sample(3)},
        headers={"Authorization": "Bearer " + API_KEYS[1]},
    )
    requests.post(
        url + "/predict",
        files={"image": sample(3)},
        headers={"Authorization": "Bearer guess-" + API_KEYS[0]},
    )
    requests.post(
        url + "/predict", data=b"junk", headers={"Authorization": "Bearer " + API_KEYS[0]}
    )
    keyed_stack.workers[0].stop()
    logs = [
        keyed_stack.apache.error_log,
        keyed_stack.apache.error_log.with_name("access.log"),
        keyed_stack.workers[0].log_path,
        keyed_stack.apache.run_dir / "beagle.conf",
    ]
    text = "".join(path.read_text() for path in logs)
    assert "POST /predict" in text  # the logs are there and were written
    for secret in (*API_KEYS, *redis_server.passwords.values(), redis_server.inspector):
        assert secret not in text


def test_wrong_redis_password_is_a_503_that_names_no_secret(start_stack, redis_server):
    stack = start_stack()
    # Point the web tier at the right Redis with the wrong password: restart only Apache.
    stack.apache.stop()
    web = redis_server.url_for("web")
    wrong = web.replace(redis_server.passwords["web"], "not-the-password")
    stack.apache.settings = config.replace(stack.apache.settings, redis_url=wrong)
    stack.apache.start()
    response = predict(stack.url, sample(1))
    assert response.status_code == 503 and "Redis is unavailable" in response.json()["error"]
    log = stack.apache.error_log.read_text()
    assert "AuthenticationError" in log and "not-the-password" not in log


def raw_request(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return sock.recv(65536).decode("latin-1")


def test_apache_is_hardened(stack):
    port = stack.apache.settings.port
    listing = requests.get(stack.url + "/_beagle_errors/")
    assert listing.status_code in (403, 404) and "Index of" not in listing.text
    assert listing.json()["success"] is False
    trace = requests.request("TRACE", stack.url + "/")
    assert trace.status_code == 405 and trace.json()["success"] is False
    many_headers = "".join(f"X-H{n}: v\r\n" for n in range(100))
    reply = raw_request(port, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n".encode())
    assert reply.startswith("HTTP/1.1 400") and '"success": false' in reply
    reply = raw_request(
        port, f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n".encode()
    )
    assert reply.startswith("HTTP/1.1 400")
    for path in ("/wsgi/beagle.wsgi", "/code/app/config.py", "/beagle.conf", "/httpd.conf"):
        response = requests.get(stack.url + path)
        assert response.status_code == 404 and "application" not in response.text
    # Sent as is: a client would normalise the "..", and Apache must not be trusted to.
    for path in ("/_beagle_errors/../wsgi/beagle.wsgi", "/_beagle_errors/%2e%2e/wsgi/beagle.wsgi"):
        reply = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert reply.split()[1] in ("400", "403", "404"), reply[:200]
        assert "create_app" not in reply and "application = " not in reply
    assert requests.get(stack.url + "/healthz").headers["Server"] == "Apache"
