"""`make run` (python -m tools.devstack) stops on the first SIGTERM or Ctrl-C, whenever it
comes: while Redis, the worker or Apache start, or once it serves."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.devstack import free_port
from app.settings import PROJECT_ROOT


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


def test_make_run_stops_on_the_first_signal_at_any_moment(redis_server):
    rng = random.Random(7)
    stops = []
    for n in range(20):
        port = free_port()
        # Half the runs bring their own Redis (nothing answers at that URL), half use ours.
        url = redis_server.url if n % 2 else f"redis://127.0.0.1:{free_port()}/0"
        env = {**os.environ, "BEAGLE_PORT": str(port), "BEAGLE_REDIS_URL": url,
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        launcher = subprocess.Popen([sys.executable, "-m", "tools.devstack"], cwd=PROJECT_ROOT,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        delay = rng.uniform(0.2, 14.0)  # serving after 6-10 s here
        time.sleep(delay)
        signum = signal.SIGTERM if n % 3 else signal.SIGINT
        launcher.send_signal(signum)
        began = time.monotonic()
        try:
            code = launcher.wait(10)
        except subprocess.TimeoutExpired:
            launcher.kill()
            code = None
        took = time.monotonic() - began
        output = launcher.stdout.read().decode()
        for _ in range(30):  # children stopped by the launcher may take a moment to go
            if not started_by(port):
                break
            time.sleep(0.1)
        left = started_by(port)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        stops.append((round(delay, 1), signal.Signals(signum).name, round(took, 1),
                      "serving" if "Beagle is serving" in output else "starting", len(left)))
        assert code is not None, f"run {n}: {signum!r} after {delay:.1f} s ignored\n{output}"
        assert left == [], f"run {n}: left running: {left}\n{output}"
    print(f"\n20 stops (after s, signal, stopped in s, state, left running): {stops}")
    assert max(took for _, _, took, _, _ in stops) < 10
