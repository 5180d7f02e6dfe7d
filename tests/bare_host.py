"""A bare Debian 12 host to deploy to, as cloud GPU images come: a user `admin` with an
SSH key and passwordless sudo, openssh-server, and nothing else beyond what debootstrap
brings (plus python3, the runtime of this host's stand-in for systemd).

Its root filesystem is built once by debootstrap from Debian's registry and kept as a
tarball in /var/cache. Each host is a fresh copy run in a chroot inside its own network
namespace, so its services get their own ports as on a separate machine (Debian's
redis-server takes 6379 there, Apache 80); it reaches the package registries through
NAT, and trusts the local CAs this machine trusts (its egress proxy's), as any host
behind such a proxy must; 127.0.0.1:<port> on this machine is relayed to its sshd.
The Debian packages a deploy downloads there are kept in /var/cache between runs on one
machine: the host's APT archive is a folder of this machine's, mounted in. (pip's own
cache keeps no wheel here: the registry serves them without caching headers.)

PID 1 here is not systemd, so the host's `systemctl` is docker-systemctl-replacement. It
sits in /usr/sbin, where APT's maintainer scripts find it while deb-systemd-helper (which
looks in /usr/bin only) enables units with its own links instead of `systemctl preset`,
which the stand-in lacks; and /run/systemd/system exists: so installing a package enables
and starts its service, as on a systemd host (Debian's redis-server takes 6379).
"""

import hashlib
import importlib.util
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tools.devstack import free_port

CACHE = Path("/var/cache/beagle-test-hosts")
DOWNLOADS = {"apt-archives": "var/cache/apt/archives"}  # kept here between runs
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
INCLUDE = ("openssh-server", "sudo", "python3")
SOURCES = (
    f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
    f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
)
STAND_IN = importlib.util.find_spec("systemctl2.systemctl3").origin  # one file
FAKE_GPU = "#!/bin/sh\necho 'GPU 0: NVIDIA stand-in (UUID: GPU-0000-0000)'\n"  # nvidia-smi -L


def rootfs():
    """The cached tarball of a bare Debian root filesystem (built on first use)."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {INCLUDE} {SOURCES}".encode()).hexdigest()[:10]
    tarball = CACHE / f"{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as work:
        root = Path(work) / "root"
        subprocess.run(
            ["debootstrap", "--include=" + ",".join(INCLUDE), SUITE, str(root), MIRROR],
            check=True,
            capture_output=True,
        )
        (root / "etc/apt/sources.list").write_text(SOURCES)
        for key_file in (root / "etc/ssh").glob("ssh_host_*"):
            key_file.unlink()  # every host makes its own
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-cf", f"{tarball}.part", "."], check=True
        )
        os.rename(f"{tarball}.part", tarball)
    return tarball


def sh(*command, **kwargs):
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


def start_sshd(netns, root, hostname, log, options=""):
    """sshd of the host whose files are ``root``, in network namespace ``netns``, its
    hostname ``hostname`` (a UTS namespace of its own), errors to ``log``."""
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "unshare",
            "--uts",
            "chroot",
            str(root),
            "/bin/sh",
            "-c",
            f"hostname {hostname} && exec /usr/sbin/sshd -D -e{options}",
        ],
        stderr=open(log, "wb"),
    )


def processes_in(root):
    """PIDs of the processes running inside ``root`` (their root directory is in it)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            seen = os.readlink(entry / "root")
        except OSError:
            continue
        if seen == str(root) or seen.startswith(f"{root}/"):
            found.append(int(entry.name))
    return found


def kill_processes_in(root, tries):
    """SIGKILL what runs inside ``root`` until nothing does, at most ``tries`` rounds."""
    for _ in range(tries):
        pids = processes_in(root)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


class BareHost:
    def __init__(self, work, client_key, gpu=False):
        tag = secrets.token_hex(3)
        self.root = Path(work) / "root"
        self.client_key = client_key
        self.gpu = gpu
        self.hostname = f"bare-{tag}"
        self.netns, self.outside, self.inside = f"bglb{tag}", f"bglb{tag}o", f"bglb{tag}i"
        self.table = f"beagle_test_{tag}"
        subnet = ipaddress.ip_network(
            f"10.{100 + secrets.randbelow(100)}."
            f"{secrets.randbelow(250)}.{4 * secrets.randbelow(60)}/30"
        )
        self.gateway, self.address = (str(a) for a in subnet.hosts())
        self.subnet = str(subnet)
        self.port = None  # the relay's, once started
        self.sshd = self.relay = None

    @property
    def target(self):
        return f"admin@127.0.0.1:{self.port}"

    def known_hosts_line(self):
        """The host's line in an operator's known_hosts (its ed25519 key, as checked)."""
        key_type, key = self.path("etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key}\n"

    def path(self, path):
        """``path`` on the host, as this machine sees it."""
        return self.root / str(path).lstrip("/")

    def chroot(self, *command):
        return sh("chroot", str(self.root), *command)

    def start(self):
        self.root.mkdir(parents=True)
        sh("tar", "-C", str(self.root), "--numeric-owner", "-xpf", str(rootfs()))
        self._network()
        self._mounts()
        self._configure()
        self.sshd = start_sshd(self.netns, self.root, self.hostname, self.root.parent / "sshd.log")
        for _ in range(5):
            if self._relay():
                return self
        raise RuntimeError(f"the bare host's sshd did not answer on 127.0.0.1:{self.port}")

    def _relay(self):
        """Relay a free loopback port to the host's sshd; True once the host's own key
        answers there. The other pytest process may take the port between free_port and
        socat's bind, and a deploy would then reach its server: then False, and the
        caller tries another port."""
        self.port = free_port()
        self.relay = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr",
                f"TCP:{self.address}:22",
            ],
            stderr=subprocess.DEVNULL,
        )
        wanted = self.known_hosts_line().split()[2]
        for _ in range(100):
            if self.relay.poll() is not None:  # its port was taken
                return False
            scan = subprocess.run(
                ["ssh-keyscan", "-T", "1", "-t", "ed25519", "-p", str(self.port), "127.0.0.1"],
                capture_output=True,
                text=True,
            )
            keys = [line.split()[2] for line in scan.stdout.splitlines() if len(line.split()) > 2]
            if keys == [wanted]:
                return True
            if keys:  # another server's key: not our host
                break
            time.sleep(0.1)
        self.relay.kill()
        self.relay.wait()
        return False

    def _network(self):
        mtu = sh("cat", f"/sys/class/net/{self._uplink()}/mtu").stdout.strip()
        sh("ip", "netns", "add", self.netns)
        sh(
            "ip",
            "link",
            "add",
            self.outside,
            "mtu",
            mtu,
            "type",
            "veth",
            "peer",
            "name",
            self.inside,
            "mtu",
            mtu,
        )
        sh("ip", "link", "set", self.inside, "netns", self.netns)
        sh("ip", "addr", "add", f"{self.gateway}/30", "dev", self.outside)
        sh("ip", "link", "set", self.outside, "up")
        inside = ["ip", "netns", "exec", self.netns, "ip"]
        sh(*inside, "addr", "add", f"{self.address}/30", "dev", self.inside)
        sh(*inside, "link", "set", self.inside, "up")
        sh(*inside, "link", "set", "lo", "up")
        sh(*inside, "route", "add", "default", "via", self.gateway)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh(
            "nft",
            f"add table ip {self.table}; add chain ip {self.table} post {{ type nat "
            f"hook postrouting priority srcnat; }}; add rule ip {self.table} post ip "
            f"saddr {self.subnet} masquerade",
        )

    @staticmethod
    def _uplink():
        return sh("ip", "route", "show", "default").stdout.split(" dev ")[1].split()[0]

    def _mounts(self):
        root = str(self.root)
        sh("mount", "-t", "proc", "proc", f"{root}/proc")
        for system in ("sys", "dev"):
            sh("mount", "--rbind", f"/{system}", f"{root}/{system}")
            # a slave: unmounting it later can never reach this machine's own /dev or /sys
            sh("mount", "--make-rslave", f"{root}/{system}")
        sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", f"{root}/run")
        for kept, there in DOWNLOADS.items():
            (CACHE / kept).mkdir(parents=True, exist_ok=True)
            self.path(there).mkdir(parents=True, exist_ok=True)
            sh("mount", "--bind", str(CACHE / kept), f"{root}/{there}")

    def _configure(self):
        self.path("etc/hostname").write_text(self.hostname + "\n")
        self.path("etc/hosts").write_text(f"127.0.0.1 localhost\n{self.address} {self.hostname}\n")
        shutil.copy("/etc/resolv.conf", self.path("etc/resolv.conf"))
        local_cas = self.path("usr/local/share/ca-certificates")
        local_cas.mkdir(parents=True, exist_ok=True)
        for ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
            shutil.copy(ca, local_cas)
        if self.path("usr/sbin/update-ca-certificates").exists():
            self.chroot("update-ca-certificates")
        for folder in ("run/sshd", "run/systemd/system", "run/lock"):  # as boot makes them
            self.path(folder).mkdir(parents=True)
        self.path("run/lock").chmod(0o1777)
        self.chroot("ssh-keygen", "-A")
        self.path("etc/ssh/sshd_config.d/test-host.conf").write_text(
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin no\n"
        )
        # "*": no password, but not locked (sshd without PAM refuses locked accounts' keys)
        self.chroot("useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", "admin")
        ssh = self.path("home/admin/.ssh")
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.chroot("chown", "-R", "admin:admin", "/home/admin/.ssh")
        sudoers = self.path("etc/sudoers.d/admin")
        sudoers.write_text("admin ALL=(ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        # The real systemctl moves aside (dpkg knows), the stand-in goes to /usr/sbin.
        self.chroot("dpkg-divert", "--quiet", "--local", "--rename", "--add", "/usr/bin/systemctl")
        shutil.copy(STAND_IN, self.path("usr/local/lib/systemctl-stand-in.py"))
        self._script(
            "usr/sbin/systemctl",
            '#!/bin/sh\nexec /usr/bin/python3 /usr/local/lib/systemctl-stand-in.py "$@"\n',
        )
        if self.gpu:
            self._script("usr/local/bin/nvidia-smi", FAKE_GPU)

    def _script(self, path, text):
        self.path(path).write_text(text)
        self.path(path).chmod(0o755)

    def stop(self):
        for process in (self.relay, self.sshd):
            if process:
                process.kill()
        kill_processes_in(self.root, 20)
        for mount in self._mounted():
            subprocess.run(["umount", "-l", mount], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.outside], capture_output=True)
        subprocess.run(["nft", "delete", "table", "ip", self.table], capture_output=True)
        if self._mounted():  # never delete through a mount: /dev above all
            raise RuntimeError(f"still mounted under {self.root}: {self._mounted()}")
        shutil.rmtree(self.root, ignore_errors=True)

    def _mounted(self):
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        return sorted((m for m in mounts if m.startswith(f"{self.root}/")), reverse=True)
