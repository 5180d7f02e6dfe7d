"""`fab deploy` over real SSH, as root, to this machine (an sshd on a loopback port) and
to two hosts in network namespaces. PID 1 here is not systemd, so these test hosts run
the real unit files under docker-systemctl-replacement (Fabric config beagle.systemctl);
production uses systemd itself. Everything is deployed under a prefix of its own and
removed afterwards. tests/test_bare_host.py deploys as a sudoer to a bare Debian host."""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from acme_server import Pebble
from deploying import (
    STEPS,
    SYSTEMCTL,
    WHEELHOUSE,
    SSHHost,
    checkout,
    fab,
    fab_refused,
    operate,
    step_lines,
    write_config,
)
from helpers import wait_for

from app.config import PROJECT_ROOT
from provisioning import envfile
from tools.devstack import free_port

pytestmark = pytest.mark.deploys

MD_STORE = "/etc/apache2/md"  # mod_md's certificates on this machine


@pytest.fixture
def deployment():
    """The prefix and settings folder a test deploys to; removed at the end."""
    name = f"beagle-test-{secrets.token_hex(3)}"
    yield {"prefix": f"/opt/{name}", "etc": f"/etc/{name}"}
    shutil.rmtree(f"/opt/{name}", ignore_errors=True)
    shutil.rmtree(f"/etc/{name}", ignore_errors=True)


@pytest.fixture
def services(deployment):
    """Stops and removes what a deploy installed on this machine, after the test, and
    puts back Debian's redis-server unit as it was (the deploy disables it)."""
    run = lambda *command: subprocess.run(command, capture_output=True)  # noqa: E731
    debian_redis = run(str(SYSTEMCTL), "is-enabled", "redis-server").stdout.strip()
    modules = set(os.listdir("/etc/apache2/mods-enabled"))
    shutil.rmtree(MD_STORE, ignore_errors=True)  # certificates of an earlier run's CA
    yield
    if debian_redis == b"enabled":
        run(str(SYSTEMCTL), "enable", "redis-server")
    wants = Path("/etc/systemd/system/multi-user.target.wants")
    units = ["apache2", "beagle-redis", "beagle-firewall"]
    for unit in [*units, *(p.stem for p in wants.glob("beagle-worker@*"))]:
        run(str(SYSTEMCTL), "stop", unit)
        run(str(SYSTEMCTL), "disable", unit)
    for path in [
        "/etc/systemd/system/beagle-worker@.service",
        "/etc/systemd/system/beagle-redis.service",
        "/etc/systemd/system/beagle-firewall.service",
        "/etc/systemd/system/apache2.service.d/beagle.conf",
        "/etc/systemd/system/logrotate.timer.d/beagle.conf",
    ]:
        Path(path).unlink(missing_ok=True)
    added = {
        m.removesuffix(".load")
        for m in set(os.listdir("/etc/apache2/mods-enabled")) - modules
        if m.endswith(".load")
    }
    if added:
        run("a2dismod", "-q", "-f", *added)
    shutil.rmtree(MD_STORE, ignore_errors=True)
    run("a2dissite", "-q", "beagle")
    Path("/etc/apache2/sites-available/beagle.conf").unlink(missing_ok=True)
    if not Path("/etc/apache2/sites-enabled/000-default.conf").exists():
        run("a2ensite", "-q", "000-default")
    shutil.rmtree("/var/lib/beagle-redis", ignore_errors=True)
    shutil.rmtree(f"{deployment['etc']}", ignore_errors=True)


def fingerprint(public_key):
    return subprocess.run(
        ["ssh-keygen", "-lf", str(public_key)], capture_output=True, text=True, check=True
    ).stdout.split()[1]


def test_unknown_or_changed_host_keys_stop_every_task_and_accept_new_records(tmp_path, client_key):
    host = SSHHost(tmp_path / "sshd").start(client_key)
    try:
        known, config = tmp_path / "known_hosts", tmp_path / "fabric.yaml"
        config.write_text(f"beagle:\n  known_hosts: {known}\n")
        ssh = ["-H", host.target, "-i", client_key]
        first = fingerprint(host.work / "host_key.pub")
        refused = fab_refused(PROJECT_ROOT, config, *ssh, "hosts")
        name = f"[{host.address}]:{host.port}"
        assert f"{name}: unknown SSH host key ssh-ed25519 {first}" in refused
        assert not known.exists()

        config.write_text(f"beagle:\n  known_hosts: {known}\n  host_keys: accept-new\n")
        assert f"host key ssh-ed25519 {first}" in fab(PROJECT_ROOT, config, *ssh, "hosts")
        assert known.read_text().startswith(f"{name} ssh-ed25519 ")
        config.write_text(f"beagle:\n  known_hosts: {known}\n")  # strict again: known now
        fab(PROJECT_ROOT, config, *ssh, "hosts")

        host.stop()
        host.start(client_key)  # the same address and port, a new key: a man in the middle
        changed = fab_refused(PROJECT_ROOT, config, *ssh, "hosts")
        second = fingerprint(host.work / "host_key.pub")
        assert f"{name}: its SSH host key CHANGED: it offers ssh-ed25519 {second}" in changed
        assert f"holds {first}" in changed
        print(
            f"\nhost keys: unknown refused ({first}), recorded with accept-new, a changed "
            f"one refused ({second})"
        )
    finally:
        host.stop()


def curl(*args):
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True
    )


def tls_report(host, port, work):
    """What testssl.sh finds on ``host``:``port`` (at 127.0.0.1): protocols offered, weak
    cipher categories and ciphers without forward secrecy offered, HSTS."""
    report = work / "testssl.json"
    subprocess.run(
        [
            "testssl",
            "--quiet",
            "--warnings",
            "off",
            "--color",
            "0",
            "-p",
            "-s",
            "-e",
            "-h",
            "--ip",
            "127.0.0.1",
            "--jsonfile",
            str(report),
            f"{host}:{port}",
        ],
        capture_output=True,
        timeout=300,
    )
    found = {item["id"]: item["finding"] for item in json.loads(report.read_text())}
    names = {
        "SSLv2": "SSLv2",
        "SSLv3": "SSLv3",
        "TLS1": "TLSv1.0",
        "TLS1_1": "TLSv1.1",
        "TLS1_2": "TLSv1.2",
        "TLS1_3": "TLSv1.3",
    }
    offered = sorted(n for i, n in names.items() if found.get(i, "").startswith("offered"))
    weak = sorted(
        i for i in found if i in WEAK_CATEGORIES and not found[i].startswith("not offered")
    )
    ciphers = [f.split() for i, f in found.items() if i.startswith("cipher_x")]
    without_fs = sorted(c[1] for c in ciphers if c[2] not in ("ECDH", "DH", "ECDH/MLKEM"))
    not_aead = sorted(c[1] for c in ciphers if not ("GCM" in c[1] or "CHACHA20" in c[1]))
    return {
        "offered": offered,
        "weak": weak,
        "ciphers": sorted(c[1] for c in ciphers),
        "without_forward_secrecy": without_fs,
        "not_aead": not_aead,
        "hsts": found.get("HSTS_time", "absent"),
    }


WEAK_CATEGORIES = (
    "cipherlist_NULL",
    "cipherlist_aNULL",
    "cipherlist_EXPORT",
    "cipherlist_LOW",
    "cipherlist_3DES_IDEA",
    "cipherlist_AVERAGE",
)
DOMAIN = "beagle.test"
API_KEY = "k-two-hosts-0123456789abcdef0123456789"


def test_deploy_over_ssh_with_https_from_acme_stress_redeploy_rollback(
    tmp_path, client_key, deployment, services
):
    host = SSHHost(tmp_path / "sshd").start(client_key)
    port, https_port = free_port(), free_port()
    pebble = Pebble(tmp_path / "pebble", port, https_port).start()
    try:
        source = checkout(tmp_path)
        config = write_config(
            tmp_path / "fabric.yaml",
            deployment,
            port,
            free_port(),
            [host],
            f"  https_port: {https_port}\n  listen: 127.0.0.1\n"
            f"  tls: {{mode: acme, domains: [{DOMAIN}], email: ops@{DOMAIN}, "
            f"ca: '{pebble.directory}', ca_certificate: {pebble.ca_certificate}}}\n",
        )
        ssh = ["-H", host.target, "-i", client_key]
        began = time.monotonic()
        first = fab(source, config, *ssh, "deploy")
        took = time.monotonic() - began
        assert "smoke: a digit 7 came back as '7' through Apache." in first
        assert f"Beagle is serving on https://{DOMAIN}:{https_port}" in first
        assert "Stress it: fab -H 127.0.0.1 stress" in first
        assert "skipped: no NVIDIA GPU" in step_lines(first)["cuda"]
        assert f"HTTPS certificate for {DOMAIN} from" in step_lines(first)["apache"]

        # HTTPS with the certificate pebble issued, checked against pebble's root; plain
        # HTTP only redirects, ACME's challenges excepted.
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(pebble.issuing_root())
        secure = curl(
            "-D",
            "-",
            "--cacert",
            str(root),
            "--resolve",
            f"{DOMAIN}:{https_port}:127.0.0.1",
            f"https://{DOMAIN}:{https_port}/healthz",
        )
        assert secure.returncode == 0 and " 200" in secure.stdout.split("\r\n")[0], secure
        headers = secure.stdout.lower()
        assert "strict-transport-security: max-age=63072000" in headers
        assert "x-content-type-options: nosniff" in headers and "referrer-policy:" in headers
        assert "frame-ancestors 'none'" in headers
        plain = curl(
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--resolve",
            f"{DOMAIN}:{port}:127.0.0.1",
            f"http://{DOMAIN}:{port}/predict?x=1",
        )
        assert " 301" in plain.stdout.split("\r\n")[0]
        assert f"location: https://{DOMAIN}:{https_port}/predict?x=1" in plain.stdout.lower()
        challenge = curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{port}/.well-known/acme-challenge/none",
        )
        assert challenge.stdout != "301"
        report = tls_report(DOMAIN, https_port, tmp_path)
        print(f"\nfirst HTTPS deploy {took:.0f} s; testssl.sh: {report}")
        assert report["offered"] == ["TLSv1.2", "TLSv1.3"] and report["weak"] == []
        assert report["ciphers"] and report["without_forward_secrecy"] == []
        assert report["not_aead"] == []
        assert report["hsts"].startswith("730 days")

        stress = fab(source, config, *ssh, "stress", "--requests", 300, "--concurrency", 16)
        assert "300 requests in" in stress and "  200: 300" in stress

        units = [
            "/etc/systemd/system/beagle-worker@0.service",
            "/etc/systemd/system/beagle-redis.service",
        ]
        verify = subprocess.run(
            ["systemd-analyze", "verify", *units], capture_output=True, text=True
        )
        assert verify.returncode == 0 and verify.stderr == "", verify.stderr

        began = time.monotonic()
        again = fab(source, config, *ssh, "deploy")
        print(f"second deploy {time.monotonic() - began:.1f} s")
        lines = step_lines(again)
        assert {step: lines[step] for step in STEPS} == {step: "unchanged" for step in STEPS}

        first_release = (Path(deployment["prefix"]) / "current").resolve()
        (source / "README.md").write_text((source / "README.md").read_text() + "\nchanged\n")
        changed = step_lines(fab(source, config, *ssh, "deploy"))
        assert changed["code"].startswith("release ") and changed["apache"] == "web code reloaded"
        assert changed["workers"] == "new code; restarted beagle-worker@0"
        assert (Path(deployment["prefix"]) / "current").resolve() != first_release

        rolled = fab(source, config, *ssh, "rollback")
        assert f"back to {first_release.name}" in rolled and "came back as '7'" in rolled
        assert (Path(deployment["prefix"]) / "current").resolve() == first_release

        operate(source, config, *ssh)

        # A changed vhost while no worker runs (the deploy may be on its way to fix them):
        # the reload waits for the app in the new daemons, not for /readyz (it needs a worker).
        subprocess.run([str(SYSTEMCTL), "stop", "beagle-worker@0"], check=True, timeout=60)
        readyz = f"https://127.0.0.1:{https_port}/readyz"

        def status():
            return curl("-k", "-o", "/dev/null", "-w", "%{http_code}", readyz).stdout

        wait_for(lambda: status() == "503", 30, "no live worker", 0.5)
        config.write_text(config.read_text() + "  settings: {web_threads: 64}\n")
        began = time.monotonic()
        apache = step_lines(fab(source, config, *ssh, "apache"))["apache"]
        print(f"fab apache, no worker running: {apache} in {time.monotonic() - began:.1f} s")
        assert re.fullmatch(
            r"Apache configuration changed; Apache reloaded gracefully, "
            r"/healthz answers 200 \(\d+\.\d s\)",
            apache,
        ), apache
    finally:
        pebble.stop()
        host.stop()


@pytest.fixture
def two_hosts(tmp_path, client_key):
    """Hosts a and b: network namespaces on a bridge, each with its own address and sshd."""
    tag, net = secrets.token_hex(3), f"10.77.{secrets.randbelow(200) + 20}"
    bridge, hosts, commands = f"bgl{tag}", [], []

    def ip(*args):
        subprocess.run(["ip", *args], check=True)
        commands.append(args)

    ip("link", "add", bridge, "type", "bridge")
    ip("addr", "add", f"{net}.254/24", "dev", bridge)
    ip("link", "set", bridge, "up")
    for n, name in enumerate("ab", start=1):
        netns, outer, inner = f"bgl{tag}{name}", f"bgl{tag}{name}o", f"bgl{tag}{name}i"
        ip("netns", "add", netns)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", netns)
        ip("link", "set", outer, "master", bridge, "up")
        ip("netns", "exec", netns, "ip", "addr", "add", f"{net}.{n}/24", "dev", inner)
        ip("netns", "exec", netns, "ip", "link", "set", inner, "up")
        ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
        hosts.append(SSHHost(tmp_path / f"sshd-{name}", f"{net}.{n}", 22, netns).start(client_key))
    yield hosts
    for host in hosts:
        host.stop()
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def namespaces_of(command_line):
    """The network namespaces of the processes whose command line has ``command_line``."""
    pids = subprocess.run(
        ["pgrep", "-f", command_line], capture_output=True, text=True
    ).stdout.split()
    return {
        subprocess.run(
            ["ip", "netns", "identify", pid], capture_output=True, text=True
        ).stdout.strip()
        for pid in pids
    }


def test_redis_and_apache_on_one_host_a_worker_on_another(
    tmp_path, two_hosts, client_key, deployment, services
):
    a, b = two_hosts
    config = write_config(
        tmp_path / "cluster.yaml",
        deployment,
        free_port(),
        free_port(),
        two_hosts,
        f"  roles: {{redis: [{a.target}], web: [{a.target}], worker: [{b.target}]}}\n"
        f"  redis_address: {a.address}\n"
        # The namespaces reach no package index: the hosts are air-gapped, as many are.
        f"  wheels: {WHEELHOUSE}\n"
        "  tls: {behind_proxy: true}\n"  # the load balancer in front speaks HTTPS
        f"  settings: {{api_keys: {API_KEY}}}\n"
        f"connect_kwargs: {{key_filename: [{client_key}]}}\n",
    )
    source = checkout(tmp_path)
    deployed = fab(source, config, "deploy")
    assert f"{a.address}: smoke: a digit 7 came back as '7'" in deployed
    assert f"{b.address}: workers:" in deployed and f"{a.address}: workers:" not in deployed
    built = rf"^{a.address}: code: release \w+ unpacked; uploaded \d+ wheels; venv \S+ built"
    assert re.search(built, deployed, re.M), deployed
    assert "firewall: Redis's port" in deployed
    stress = fab(source, config, "stress", "--requests", 300, "--concurrency", 16)
    assert "  200: 300" in stress
    redis_port = int(re.search(r"redis_port: (\d+)", config.read_text()).group(1))
    workers = namespaces_of(f"{deployment['prefix']}/current/venv/bin/python -m app.worker")
    redis = namespaces_of(f"redis-server {a.address}:{redis_port}")  # Redis's own title
    print(f"\ntwo hosts: the worker runs in {workers}, Redis in {redis}")
    assert workers == {b.netns} and redis == {a.netns}

    # Redis speaks TLS only, with the deployment's CA; plaintext is refused, and so is
    # anyone outside the deployment (this machine, on the bridge, is).
    etc = Path(deployment["etc"])
    worker_url = envfile.parse((etc / "worker.env").read_text())["BEAGLE_REDIS_URL"]
    assert worker_url.startswith("rediss://worker:") and "ssl_ca_certs=" in worker_url
    probe = (
        "import sys, redis\n"
        "try:\n"
        "    print(redis.Redis.from_url(sys.argv[1], socket_connect_timeout=3,"
        " socket_timeout=3).ping())\n"
        "except redis.RedisError as exc:\n"
        "    print(type(exc).__name__)\n"
    )

    def ping(netns, url):
        command = ["ip", "netns", "exec", netns] if netns else []
        return subprocess.run(
            [*command, sys.executable, "-c", probe, url], capture_output=True, text=True, timeout=30
        ).stdout.strip()

    plaintext = worker_url.replace("rediss://", "redis://").split("?")[0]
    seen = {
        "over TLS from b": ping(b.netns, worker_url),
        "in clear from b": ping(b.netns, plaintext),
        "over TLS from outside": ping(None, worker_url),
    }
    print(f"Redis from each place: {seen}")
    assert seen == {
        "over TLS from b": "True",
        "in clear from b": "ConnectionError",
        "over TLS from outside": "TimeoutError",
    }
    conf = (etc / "redis.conf").read_text()
    assert f"bind {a.address}\n" in conf and "port 0\ntls-port" in conf
    assert "protected-mode yes" in conf
