"""`make run` stops when a terminal's Ctrl-C or a SIGTERM reaches its process group
(make and the launcher, python -m tools.devstack), whenever it comes: while Redis, the
worker or Apache start, right after it starts serving, or later. make passes a SIGTERM on
to the launcher, so the launcher gets two signals at once."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.config import PROJECT_ROOT
from tools.devstack import ephemeral_ports_start, free_port

STOPS = 16
SERVING = "Beagle is serving"


def started_by(port):
    """PIDs of processes that carry this launcher's BEAGLE_PORT: all it started."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"BEAGLE_PORT={port}\0".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def foreground_signals():
    """Ctrl-C's default action, as in a terminal's foreground job (a shell starts
    background jobs, this suite perhaps among them, with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_line(path, text, process, timeout):
    """Seconds until ``text`` appears in the file at ``path`` (None if it never does)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout and process.poll() is None:
        if text in path.read_text():
            return time.monotonic() - began
        time.sleep(0.02)
    return None


def test_make_run_stops_when_its_process_group_is_signalled_at_any_moment(redis_server, tmp_path):
    rng = random.Random(7)
    stops = []
    for n in range(STOPS):
        port = free_port()
        # Half the runs bring their own Redis (nothing answers at that URL), half use ours.
        url = redis_server.url if n % 2 else f"redis://127.0.0.1:{free_port()}/0"
        env = {
            **os.environ,
            "BEAGLE_PORT": str(port),
            "BEAGLE_REDIS_URL": url,
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        output = tmp_path / f"launcher-{n}.log"
        with open(output, "wb") as out:
            # Its own process group, as a shell gives a foreground job: the signals below
            # reach it the way a terminal's Ctrl-C does, and nothing else of the test's.
            launcher = subprocess.Popen(
                ["make", "-s", "run", f"VENV={sys.prefix}"],
                preexec_fn=foreground_signals,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        if n % 3 == 0:  # the moment it starts serving
            moment = wait_for_line(output, SERVING, launcher, 60)
        else:  # anywhere in its life: serving after 5-9 s here
            moment = rng.uniform(0.2, 10.0)
            time.sleep(moment)
        signum = signal.SIGTERM if n % 4 else signal.SIGINT
        began = time.monotonic()
        os.killpg(launcher.pid, signum)
        try:
            code = launcher.wait(10)
        except subprocess.TimeoutExpired:
            launcher.kill()
            code = None
        took = time.monotonic() - began
        text = output.read_text()
        for _ in range(50):  # children stopped by the launcher may take a moment to go
            if not started_by(port):
                break
            time.sleep(0.1)
        left = started_by(port)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        stops.append(
            (
                None if moment is None else round(moment, 1),
                signal.Signals(signum).name,
                round(took, 2),
                "serving" if SERVING in text else "starting",
                len(left),
            )
        )
        assert code is not None, f"run {n}: signals after {moment} s ignored\n{text}"
        assert left == [], f"run {n}: left running: {left}\n{text}"
        # Before the launcher's handlers are in (make's setup step, Python's imports; under
        # this suite's load that outlasted the shortest wait above) a signal ends it at once,
        # having started nothing; once it has said anything, it says it stopped.
        assert "devstack: stopped" in text or "devstack:" not in text, text
    slowest = max(took for _, _, took, _, _ in stops)
    print(
        f"\n{STOPS} stops (after s, signal, stopped in s, state, left running): {stops}; "
        f"slowest {slowest:.2f} s"
    )
    assert slowest < 10


def test_free_ports_are_below_the_ephemeral_range_and_each_handed_out_once():
    """A port from the kernel's ephemeral range can be taken by any outgoing connection
    (the other pytest process's load, say) between free_port and the server's bind: the
    server then fails to start (a deploy's Apache did, in CI)."""
    ports = [free_port() for _ in range(200)]
    assert max(ports) < ephemeral_ports_start()
    assert len(set(ports)) == len(ports)
