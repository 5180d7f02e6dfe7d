"""`fab deploy` over real SSH, as root, to this machine (an sshd on a loopback port) and
to two hosts in network namespaces. PID 1 here is not systemd, so these test hosts run
the real unit files under docker-systemctl-replacement (Fabric config beagle.systemctl);
production uses systemd itself. Everything is deployed under a prefix of its own and
removed afterwards. tests/test_bare_host.py deploys as a sudoer to a bare Debian host."""

import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
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

from app.config import PROJECT_ROOT
from tools.devstack import free_port


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
    yield
    if debian_redis == b"enabled":
        run(str(SYSTEMCTL), "enable", "redis-server")
    wants = Path("/etc/systemd/system/multi-user.target.wants")
    for unit in ["apache2", "beagle-redis", *(p.stem for p in wants.glob("beagle-worker@*"))]:
        run(str(SYSTEMCTL), "stop", unit)
        run(str(SYSTEMCTL), "disable", unit)
    for path in [
        "/etc/systemd/system/beagle-worker@.service",
        "/etc/systemd/system/beagle-redis.service",
        "/etc/systemd/system/apache2.service.d/beagle.conf",
    ]:
        Path(path).unlink(missing_ok=True)
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


def test_deploy_stress_redeploy_rollback_over_ssh(tmp_path, client_key, deployment, services):
    host = SSHHost(tmp_path / "sshd").start(client_key)
    try:
        source = checkout(tmp_path)
        port = free_port()
        config = write_config(tmp_path / "fabric.yaml", deployment, port, free_port())
        ssh = ["-H", host.target, "-i", client_key]
        began = time.monotonic()
        first = fab(source, config, *ssh, "deploy")
        took = time.monotonic() - began
        assert "smoke: a digit 7 came back as '7' through Apache." in first
        assert f"Beagle is serving on http://127.0.0.1:{port}" in first
        assert "Stress it: fab -H 127.0.0.1 stress" in first
        assert "skipped: no NVIDIA GPU" in step_lines(first)["cuda"]

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
        print(f"\nfirst deploy {took:.0f} s, second {time.monotonic() - began:.1f} s")
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
    finally:
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
        f"  roles: {{redis: [{a.target}], web: [{a.target}], worker: [{b.target}]}}\n"
        f"  redis_address: {a.address}\n"
        # The namespaces reach no package index: the hosts are air-gapped, as many are.
        f"  wheels: {WHEELHOUSE}\n"
        f"connect_kwargs: {{key_filename: [{client_key}]}}\n",
    )
    source = checkout(tmp_path)
    deployed = fab(source, config, "deploy")
    assert f"{a.address}: smoke: a digit 7 came back as '7'" in deployed
    assert f"{b.address}: workers:" in deployed and f"{a.address}: workers:" not in deployed
    built = rf"^{a.address}: code: release \w+ unpacked; uploaded \d+ wheels; venv \S+ built"
    assert re.search(built, deployed, re.M), deployed
    stress = fab(source, config, "stress", "--requests", 300, "--concurrency", 16)
    assert "  200: 300" in stress
    redis_port = int(re.search(r"redis_port: (\d+)", config.read_text()).group(1))
    workers = namespaces_of(f"{deployment['prefix']}/current/venv/bin/python -m app.worker")
    redis = namespaces_of(f"redis-server {a.address}:{redis_port}")  # Redis's own title
    print(f"\ntwo hosts: the worker runs in {workers}, Redis in {redis}")
    assert workers == {b.netns} and redis == {a.netns}
    conf = Path(deployment["etc"], "redis.conf").read_text()
    assert f"bind {a.address}\n" in conf and "protected-mode yes" in conf
