"""`fab deploy` the way a new operator runs it: to a bare Debian 12 host
(tests/bare_host.py), logged in as `admin`, a user with passwordless sudo, with API keys
on. Nothing but what the deploy installs runs there afterwards."""

import os
import re
import subprocess
import threading
import time

import pytest
from bare_host import BareHost
from deploying import BIN, STEPS, checkout, fab, operate, step_lines
from fabric import Config, Connection
from invoke.exceptions import UnexpectedExit

from provisioning import remote
from provisioning.pki import Authority

pytestmark = pytest.mark.deploys

KEYS = "bare-key-1-0123456789abcdef0123456789,bare-key-2-0123456789abcdef0123456789"
SAMPLE = "/opt/beagle/current/stress/images/digit_7.png"


@pytest.fixture
def bare_host(tmp_path, client_key):
    host = BareHost(tmp_path / "host", client_key)
    try:
        yield host.start()
    finally:
        host.stop()


# What holds a secret under /etc/beagle: settings (API keys), each role's Redis
# credentials, Redis's own users' passwords, the TLS key.
SECRET_FILES = (
    "beagle.env",
    "web.env",
    "worker.env",
    "admin.env",
    "redis-users.env",
    "tls/edge.key",
)


class Watch:
    """Everything a deploy puts under the host's upload folder (/var/tmp) and its env
    file, each (path, mode, owner uid) as seen while the deploy ran, polled every 2 ms."""

    def __init__(self, host):
        self.host, self.seen, self.stop = host, set(), threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        uploads, etc = self.host.path("var/tmp"), self.host.path("etc/beagle")
        while not self.stop.wait(0.002):
            paths = list(uploads.glob("beagle-upload.*"))
            paths += [f for p in paths for f in children(p)]
            paths += [p for name in SECRET_FILES for p in etc.glob(f"{name}*")]
            for path in paths:
                try:
                    status = path.lstat()
                except FileNotFoundError:
                    continue
                self.seen.add(
                    (str(path.relative_to(self.host.root)), status.st_mode & 0o7777, status.st_uid)
                )

    def finish(self):
        self.stop.set()
        self.thread.join()
        return self.seen


def children(folder):
    """What ``folder`` holds, or nothing once the deploy has removed it."""
    try:
        return list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def test_a_sudoer_deploys_a_bare_host_with_api_keys(tmp_path, bare_host, client_key):
    source = checkout(tmp_path)
    config = tmp_path / "fabric.yaml"
    # The operator's own certificate for the host (made here by a CA of the test's).
    issued = Authority(tmp_path / "operator-ca").issue("bare", ["127.0.0.1"])
    (tmp_path / "bare.pem").write_bytes(issued.certificate)
    (tmp_path / "bare.key").write_bytes(issued.key)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(bare_host.known_hosts_line())
    config.write_text(
        f"beagle:\n  settings: {{api_keys: '{KEYS}'}}\n  known_hosts: {known_hosts}\n"
        f"  tls: {{mode: certificate, certificate: {tmp_path / 'bare.pem'}, "
        f"key: {tmp_path / 'bare.key'}}}\n"
    )
    ssh = ["-H", bare_host.target, "-i", client_key]
    watch = Watch(bare_host)
    began = time.monotonic()
    first = fab(source, config, *ssh, "deploy")
    first_took = time.monotonic() - began
    seen = watch.finish()
    lines = step_lines(first)
    assert "smoke: a digit 7 came back as '7' through Apache." in first  # with a key
    assert lines["packages"].startswith("installed python3-venv, curl, redis-server, apache2")
    assert lines["redis"].startswith("stopped and disabled Debian's redis-server (port 6379")

    # Secrets: uploads went through private folders of admin's, the env files and the TLS
    # key were never readable by anyone but root, and nothing is left behind.
    admin = int(bare_host.chroot("id", "-u", "admin").stdout)
    folders = {
        (path, mode, uid)
        for path, mode, uid in seen
        if path.count("/") == 2 and path.startswith("var/tmp/beagle-upload.")
    }
    env_files = {(path, mode, uid) for path, mode, uid in seen if path.startswith("etc/")}
    print(
        f"\nbare host, first deploy {first_took:.0f} s; seen during it: {len(folders)} "
        f"upload folders, modes {sorted({oct(m) for _, m, _ in folders})}, owner uid "
        f"{sorted({u for _, _, u in folders})}; env files and key as {sorted(env_files)}"
    )
    assert folders and {(mode, uid) for _, mode, uid in folders} == {(0o700, admin)}
    assert env_files and {(mode, uid) for _, mode, uid in env_files} == {(0o600, 0)}
    assert {path for path, _, _ in env_files} >= {
        "etc/beagle/beagle.env",
        "etc/beagle/web.env",
        "etc/beagle/worker.env",
        "etc/beagle/admin.env",
        "etc/beagle/tls/edge.key",
    }
    assert not list(bare_host.path("var/tmp").iterdir())
    env = bare_host.path("etc/beagle/beagle.env").stat()
    assert (env.st_mode & 0o777, env.st_uid) == (0o600, 0)

    c = Connection(
        "127.0.0.1",
        user="admin",
        port=bare_host.port,
        connect_kwargs={"key_filename": [str(client_key)]},
        config=Config(overrides={"run": {"in_stream": False}}),
    )  # pytest owns stdin
    assert "Permission denied" in c.run("cat /etc/beagle/beagle.env", warn=True, hide=True).stderr
    # Every part of a compound command runs under sudo.
    assert remote.run(c, "id -u && id -u").stdout == "0\n0\n"
    assert (
        remote.run(
            c, "set -a; . /etc/beagle/beagle.env; set +a; echo ${BEAGLE_API_KEYS%%,*}"
        ).stdout
        == KEYS.split(",")[0] + "\n"
    )
    # An upload that fails removes its private folder too.
    with pytest.raises(UnexpectedExit):
        remote.upload(c, b"x", "/proc/1/no-such-place/file")
    assert not list(bare_host.path("var/tmp").iterdir())

    # HTTPS with the operator's certificate (its key root's alone); plain HTTP redirects.
    edge_key = bare_host.path("etc/beagle/tls/edge.key").stat()
    assert (edge_key.st_mode & 0o777, edge_key.st_uid) == (0o600, 0)
    ca = "/tmp/operator-ca.pem"
    bare_host.path(ca).write_bytes((tmp_path / "operator-ca" / "ca.pem").read_bytes())
    plain = "curl -s -o /dev/null -w '%{http_code} %{redirect_url}' http://127.0.0.1/predict"
    assert c.run(plain, hide=True).stdout == "301 https://127.0.0.1/predict"
    # API keys on: a request without one is refused.
    curl = (
        f"curl -s --cacert {ca} -o /dev/null -w '%{{http_code}}' -F image=@{SAMPLE} "
        "https://127.0.0.1/predict"
    )
    assert c.run(curl, hide=True).stdout == "401"
    assert (
        c.run(
            curl.replace("curl", f"curl -H 'Authorization: Bearer {KEYS.split(',')[1]}'"), hide=True
        ).stdout
        == "200"
    )

    # Debian's redis-server is gone from 6379; Beagle's Redis refuses dangerous commands.
    assert remote.run(
        c, "systemctl is-active redis-server; systemctl is-enabled redis-server", warn=True
    ).stdout.split() == ["inactive", "disabled"]
    listening = subprocess.run(
        ["ip", "netns", "exec", bare_host.netns, "ss", "-ltnH"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ":6379 " not in listening and "127.0.0.1:6380 " in listening
    refused = remote.run(
        c,
        "set -a; . /etc/beagle/admin.env; /opt/beagle/current/venv/bin/"
        'python -c "import os, redis; redis.Redis.from_url(os.environ['
        "'BEAGLE_REDIS_URL']).config_get('dir')\"",
        warn=True,
    )
    assert "NoPermissionError" in refused.stderr

    began = time.monotonic()
    again = step_lines(fab(source, config, *ssh, "deploy"))
    print(f"second deploy {time.monotonic() - began:.1f} s")
    assert {step: again[step] for step in STEPS} == {step: "unchanged" for step in STEPS}

    stress = fab(source, config, *ssh, "stress", "--requests", 300, "--concurrency", 16)
    assert "300 requests in" in stress and "  200: 300" in stress  # the key from the env file
    operate(source, config, *ssh)

    first_release = os.readlink(bare_host.path("opt/beagle/current"))
    (source / "README.md").write_text((source / "README.md").read_text() + "\nchanged\n")
    changed = step_lines(fab(source, config, *ssh, "deploy"))
    assert changed["workers"] == "new code; restarted beagle-worker@0"
    rolled = fab(source, config, *ssh, "rollback")
    assert re.search(rf"current: back to {first_release.rsplit('/', 1)[1]}", rolled)
    assert "came back as '7'" in rolled
    assert os.readlink(bare_host.path("opt/beagle/current")) == first_release


@pytest.mark.cuda_download
def test_the_cuda_branch_runs_as_far_as_a_machine_without_a_gpu_allows(tmp_path, client_key):
    """nvidia-smi on this host is a stand-in that lists one GPU; there is no driver, so the
    deploy must install the CUDA builds, register their libraries with the dynamic
    linker, find ONNX Runtime's CUDA provider, then stop because TensorFlow sees no GPU."""
    host = BareHost(tmp_path / "host", client_key, gpu=True).start()
    try:
        source, config = checkout(tmp_path), tmp_path / "fabric.yaml"
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(host.known_hosts_line())
        config.write_text(f"beagle:\n  listen: 127.0.0.1\n  known_hosts: {known_hosts}\n")
        began = time.monotonic()
        done = subprocess.run(
            [
                str(BIN / "fab"),
                "-f",
                str(config),
                "-H",
                host.target,
                "-i",
                str(client_key),
                "deploy",
            ],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        took = time.monotonic() - began
        lines = step_lines(done.stdout)
        linked = host.chroot("ldconfig", "-p").stdout
        venvs = host.path("opt/beagle/venvs")
        venv_size = subprocess.run(["du", "-sh", str(venvs)], capture_output=True, text=True)
        print(
            f"\nCUDA branch: deploy stopped after {took:.0f} s (venvs: "
            f"{venv_size.stdout.strip() or venv_size.stderr.strip()});\n"
            f"{done.stdout[-3000:]}\n{done.stderr.strip()[-3000:]}"
        )
        assert "code" in lines and "cuda" in lines, "the deploy stopped early: see above"
        assert done.returncode != 0
        assert re.search(r"venv /opt/beagle/venvs/\w+ built with CUDA", lines["code"])
        assert re.fullmatch(
            r"registered \d+ CUDA library folders; ONNX Runtime has "
            r"CUDAExecutionProvider",
            lines["cuda"],
        )
        assert (
            "TensorFlow in /opt/beagle/current/venv lists no GPU although nvidia-smi "
            "shows 1: check the NVIDIA driver"
        ) in done.stderr
        for library in ("libcudnn.so", "libcublas.so"):
            assert re.search(
                rf"{library}\S* .* => /opt/beagle/venvs/\w+/lib/python3\.11/"
                rf"site-packages/nvidia/",
                linked,
            ), library
        assert "workers" not in lines  # the deploy stopped before starting any
        assert not list(host.path("var/tmp").iterdir())  # nothing left, failure or not
    finally:
        host.stop()
