"""haproxy on this machine, configured as docs/availability.md documents it."""

import re
import subprocess
import time
from pathlib import Path

from app.config import PROJECT_ROOT
from tools.devstack import free_port


def documented_haproxy_config():
    """The haproxy.cfg of docs/availability.md, as written there."""
    text = (PROJECT_ROOT / "docs/availability.md").read_text()
    return re.search(r"```haproxy\n(.*?)```", text, re.S).group(1)


def documented_longest_hold_s():
    """The longest the documented haproxy may hold a request: ``timeout connect`` and
    ``timeout server`` for each of its tries, ``retries`` + 1."""
    config = documented_haproxy_config()
    per_try = sum(
        int(re.search(rf"timeout {kind} (\d+)s", config).group(1)) for kind in ("connect", "server")
    )
    return per_try * (int(re.search(r"retries (\d+)", config).group(1)) + 1)


class HAProxy:
    """haproxy on this machine in front of the web hosts: docs/availability.md's config
    with this test's addresses."""

    def __init__(self, work, backends, port):
        self.work, self.backends, self.port = Path(work), backends, free_port()
        self.app_port = port
        self.process = None

    def start(self):
        self.work.mkdir(parents=True, exist_ok=True)
        documented = documented_haproxy_config()
        server = re.search(r"^ *server web1 \S+ (.*)$", documented, re.M)
        servers = "".join(
            f"    server {name} {address}:{self.app_port} {server.group(1)}\n"
            for name, address in self.backends
        )
        documented = re.sub(r"^ *server .*\n", "", documented, flags=re.M) + servers
        config = self.work / "haproxy.cfg"
        logged = "global\n    log stderr format raw local0 info\n" + documented.replace(
            "defaults\n", "defaults\n    log global\n    option httplog\n"
        )  # the test's own addition: each request and health check in haproxy.log
        config.write_text(logged.replace("bind :80", f"bind 127.0.0.1:{self.port}"))
        self.process = subprocess.Popen(
            ["haproxy", "-f", str(config), "-db"],
            stdout=open(self.work / "haproxy.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(1.5)  # both backends pass their first health checks
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
