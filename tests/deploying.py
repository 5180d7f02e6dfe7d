"""What the deploy tests share: a loopback sshd test host, a copy of the checkout to
deploy from, Fabric run as an operator runs it, and the step lines it prints."""

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.config import PROJECT_ROOT
from tools.devstack import free_port

BIN = Path(sys.executable).parent
SYSTEMCTL = BIN / "systemctl3"
STEPS = ("packages", "code", "current", "settings", "redis", "workers", "apache", "releases")
WHEELHOUSE = "/var/cache/beagle-test-wheels"  # downloaded once, kept between runs
JOURNAL = Path("/var/log/journal")  # what units on this machine print, under systemctl3


class SSHHost:
    """sshd with its own host key, on ``address``:``port``, in network namespace ``netns``."""

    def __init__(self, work, address="127.0.0.1", port=None, netns=None):
        self.work, self.address, self.netns = Path(work), address, netns
        self.port = port or free_port()
        self.process = None

    def start(self, client_key):
        self.work.mkdir(parents=True, exist_ok=True)
        key = self.work / "host_key"
        for old in (key, key.with_suffix(".pub")):  # started again: a new host key
            old.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = self.work / "authorized_keys"
        authorized.write_text(Path(f"{client_key}.pub").read_text())
        config = self.work / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {key}\n"
            f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {self.work}/sshd.pid\nSubsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.process = subprocess.Popen(
            prefix + ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stderr=open(self.work / "sshd.log", "wb"),
        )
        for _ in range(100):
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((self.address, self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"sshd on {self.address}:{self.port} did not start")

    @property
    def target(self):
        return f"root@{self.address}:{self.port}"

    def known_hosts_line(self):
        """This host's line in an operator's known_hosts."""
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        key_type, key = (self.work / "host_key.pub").read_text().split()[:2]
        return f"{name} {key_type} {key}\n"

    def stop(self):
        if self.process:
            self.process.terminate()
            self.process.wait(10)


def checkout(tmp_path):
    """A copy of this checkout to deploy from (and to change)."""
    copy = tmp_path / "checkout"
    shutil.copytree(
        PROJECT_ROOT,
        copy,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", ".hypothesis", "reports"),
    )
    return copy


def write_config(path, deployment, port, redis_port, hosts, extra=""):
    """A Fabric config deploying under ``deployment``'s folders, whose known_hosts holds
    the keys of ``hosts`` (SSHHost), its CA in a folder of the test's own."""
    known_hosts = path.parent / "known_hosts"
    known_hosts.write_text("".join(host.known_hosts_line() for host in hosts))
    path.write_text(
        f"beagle:\n  prefix: {deployment['prefix']}\n  etc: {deployment['etc']}\n"
        f"  port: {port}\n  redis_port: {redis_port}\n  systemctl: {SYSTEMCTL}\n"
        f"  known_hosts: {known_hosts}\n  pki: {path.parent / 'pki'}\n" + extra
    )
    return path


def fab(source, config, *args, timeout=900):
    done = subprocess.run(
        [str(BIN / "fab"), "-f", str(config), *map(str, args)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:] + units_printed()
    return done.stdout


def units_printed(lines=10):
    """The last lines each unit on this machine printed: a unit that failed to start says
    why only there (Apache's failed bind, say), not in the deploy's output."""
    return "".join(
        f"\n--- {log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted(JOURNAL.glob("*.log"))
    )


def fab_refused(source, config, *args, timeout=120):
    """What fab said when it stopped with an error (it must)."""
    done = subprocess.run(
        [str(BIN / "fab"), "-f", str(config), *map(str, args)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode != 0, done.stdout[-4000:]
    return done.stdout + done.stderr


def step_lines(output):
    return {m.group(1): m.group(2) for m in re.finditer(r"^\S+: (\w+): (.*)$", output, re.M)}


def operate(source, config, *ssh):
    """status, flush-queue and logs, as an operator runs them, each checked."""
    status = fab(source, config, *ssh, "status")
    for line in (
        "beagle-redis: active",
        "apache2: active",
        "beagle-worker@0: active",
        '"ready":true',
        "model digits v1: 1 live workers",
    ):
        assert line in status
    assert "removed 0 queued requests" in fab(source, config, *ssh, "flush-queue")
    assert "beagle_access |" in fab(source, config, *ssh, "logs", "--lines", 3)
