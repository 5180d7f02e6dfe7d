"""LitServe, the benchmark's peer: its own venv, made once and kept in /var/cache, and a
server for one model of Beagle's repository (stress/litserve_app.py).

The venv holds LitServe and what it needs; a .pth line puts Beagle's venv after it, so
both servers run the very same TensorFlow, ONNX Runtime, NumPy and Pillow builds.
"""

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from app.config import PROJECT_ROOT
from stress import cpu
from tools.devstack import free_port, responds, wait_until

VENV = Path("/var/cache/beagle-bench/litserve-venv")
PINS = ("litserve==0.2.19", "python-multipart==0.0.34")


def venv():
    """LitServe's venv, made on first use."""
    ready = VENV / f".ready-{'-'.join(PINS)}"
    if ready.exists():
        return VENV
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", *PINS],
        check=True,
    )
    site = Path(
        subprocess.run(
            [
                str(VENV / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "beagle-runtimes.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ready.touch()
    return VENV


class LitServe:
    """A LitServe server for ``spec`` on a free loopback port."""

    def __init__(self, spec, max_batch_size, batch_timeout, workers, threads, log_path):
        self.spec, self.log_path = spec, log_path
        self.max_batch_size, self.batch_timeout = max_batch_size, batch_timeout
        self.workers, self.threads = workers, threads
        self.port, self.process = free_port(), None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=300):
        python = venv() / "bin" / "python"
        command = [
            str(python),
            "-m",
            "stress.litserve_app",
            str(self.spec.path.parent.parent),
            self.spec.name,
            str(self.spec.version),
            "--port",
            str(self.port),
            "--max-batch-size",
            str(self.max_batch_size),
            "--batch-timeout",
            str(self.batch_timeout),
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
        ]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
        wait_until(lambda: responds(self.url + "/health"), self.process, timeout, "LitServe")
        return self

    def stop(self):
        """Stop every process of the server, children included: its inference processes
        outlive the main one by seconds, and would load the next run's cores."""
        if self.process is None:
            return
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGTERM)
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        for _ in range(300):
            if not cpu.group_alive(group):
                return
            time.sleep(0.1)
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":  # make the venv: python -m stress.peer
    print(venv(), file=sys.stderr)
