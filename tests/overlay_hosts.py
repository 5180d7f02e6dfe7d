"""Hosts for the multi-host tests, made of this machine: each a network namespace on a
bridge, with an address of its own, its own copy-on-write view of this machine's files
(overlayfs over /, the changes kept in memory), its own host name and sshd. Deploying to
one changes nothing on this machine nor on the others — unlike hosts that share its
files, where two Redis hosts would write the same redis.conf — and costs no apt: this
machine's Debian packages are already there. The hosts reach no package index, as
air-gapped hosts do (deploy with beagle.wheels).

Folders given as ``shared`` are the same on every host (a venv built by the first deploy
is found ready by the next hosts').
"""

import secrets
import subprocess
import time
from pathlib import Path

from bare_host import kill_processes_in, processes_in, sh, start_sshd


class Network:
    """A bridge; `add` puts a host on it. This machine is on it too (``gateway``)."""

    def __init__(self, work):
        tag = secrets.token_hex(2)
        self.work, self.bridge = Path(work), f"bglo{tag}"
        self.prefix = f"10.78.{secrets.randbelow(200) + 20}"
        self.gateway = f"{self.prefix}.254"
        self.hosts = []
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add(self, name, client_key, shared=()):
        host = OverlayHost(self, name, len(self.hosts) + 1, client_key, shared)
        self.hosts.append(host)
        return host.start()

    def stop(self):
        for host in self.hosts:
            host.stop()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class OverlayHost:
    def __init__(self, network, name, n, client_key, shared):
        self.network, self.name = network, name
        self.address = f"{network.prefix}.{n}"
        self.netns = f"{network.bridge}{name}"[:15]
        self.work = network.work / name
        self.root = self.work / "root"
        self.client_key, self.shared = client_key, shared
        self.sshd = None

    @property
    def target(self):
        return f"root@{self.address}:22"

    def path(self, path):
        """``path`` on the host, as this machine sees it."""
        return self.root / str(path).lstrip("/")

    def start(self):
        self._network()
        self._files()
        self._ssh()
        return self

    def _network(self):
        outer, inner = f"{self.netns}o"[:15], f"{self.netns}i"[:15]
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", self.netns)
        sh("ip", "link", "set", outer, "master", self.network.bridge, "up")
        inside = ["ip", "netns", "exec", self.netns, "ip"]
        sh(*inside, "addr", "add", f"{self.address}/24", "dev", inner)
        sh(*inside, "link", "set", inner, "up")
        sh(*inside, "link", "set", "lo", "up")

    def _files(self):
        layer = self.work / "layer"
        for folder in (layer, self.root):
            folder.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "tmpfs", "tmpfs", str(layer))  # another fs than /: no overlap
        (layer / "upper").mkdir()
        (layer / "work").mkdir()
        sh(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir=/,upperdir={layer}/upper,workdir={layer}/work",
            str(self.root),
        )
        sh("mount", "-t", "proc", "proc", str(self.path("proc")))
        for system in ("sys", "dev"):
            sh("mount", "--rbind", f"/{system}", str(self.path(system)))
            sh("mount", "--make-rslave", str(self.path(system)))
        for scratch in ("run", "tmp"):
            sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", str(self.path(scratch)))
        for folder in self.shared:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.path(folder).mkdir(parents=True, exist_ok=True)
            sh("mount", "--bind", str(folder), str(self.path(folder)))
        for folder in ("run/sshd", "run/lock", "run/systemd/system"):
            self.path(folder).mkdir(parents=True, exist_ok=True)
        for profile in ("root/.bashrc", "root/.profile"):  # a host as it comes: no pyenv
            self.path(profile).write_text("")
        self.path("etc/hostname").write_text(self.name + "\n")
        hosts = "".join(f"{h.address} {h.name}\n" for h in self.network.hosts)
        self.path("etc/hosts").write_text(f"127.0.0.1 localhost\n{hosts}")

    def _ssh(self):
        ssh = self.path("etc/beagle-test-sshd")
        ssh.mkdir(parents=True, exist_ok=True)
        key = ssh / "host_key"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        (ssh / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        (ssh / "sshd_config").write_text(
            "Port 22\nHostKey /etc/beagle-test-sshd/host_key\n"
            "AuthorizedKeysFile /etc/beagle-test-sshd/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n"
            "StrictModes no\nSubsystem sftp internal-sftp\n"
        )
        self.sshd = start_sshd(
            self.netns,
            self.root,
            self.name,
            self.work / "sshd.log",
            " -f /etc/beagle-test-sshd/sshd_config",
        )
        for _ in range(100):
            probe = subprocess.run(
                ["ip", "netns", "exec", self.netns, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/22"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: sshd did not start ({self.work / 'sshd.log'})")

    def run(self, command, timeout=120):
        """``command`` as root on the host (its network, its files), checked."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, "chroot", str(self.root), "/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )
        assert done.returncode == 0, f"{self.name}: {command}: {done.stdout}{done.stderr}"
        return done.stdout

    def known_hosts_line(self):
        key_type, key = self.path("etc/beagle-test-sshd/host_key.pub").read_text().split()[:2]
        return f"{self.address} {key_type} {key}\n"

    def pids_of(self, command_line):
        """PIDs of this host's processes whose command line holds ``command_line``."""
        found = []
        for pid in processes_in(self.root):
            try:
                if (
                    command_line
                    in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                ):
                    found.append(pid)
            except OSError:
                continue
        return found

    def stop(self):
        if self.sshd:
            self.sshd.kill()
        kill_processes_in(self.root, 30)
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.work}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
