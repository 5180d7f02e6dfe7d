"""Show Beagle's logs together: the Apache error and access logs (the web tier writes to
the error log) and the workers' (journald under systemd, files under `make run`), each
line prefixed with where it came from. --request-id follows one request through all of
them: the access log, the web tier and the workers name it on every line about it.

    python -m scripts.tail_logs                      # what this host has, last 20 lines
    python -m scripts.tail_logs --follow
    python -m scripts.tail_logs --request-id 3f2a... --lines 100000
    python -m scripts.tail_logs --file /tmp/beagle-run-8080/logs/error.log --file w.log
"""

import argparse
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from app import config

PRODUCTION = Path("/var/log/apache2")
SUPERVISOR_LOGS = Path("/var/log/journal")
JOURNALD = Path("/run/systemd/journal/socket")
WORKER_UNIT = "beagle-worker@*"


def sources(args):
    """[(name, command)] for every log to show."""
    if args.file:
        files = [Path(f) for f in args.file]
    elif (PRODUCTION / "beagle_error.log").exists():
        files = [PRODUCTION / "beagle_error.log", PRODUCTION / "beagle_access.log"]
    else:
        run_dir = Path(tempfile.gettempdir()) / f"beagle-run-{config.load().port}"
        files = sorted((run_dir / "logs").glob("*.log"))
    if not args.file:  # where a systemctl other than systemd's (a test host) logs services
        files += sorted(SUPERVISOR_LOGS.glob("beagle-worker*.log"))
    tail = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else [])
    commands = [(path.stem, tail + [str(path)]) for path in files if path.exists()]
    if not args.file and JOURNALD.exists():  # journald keeps this host's service logs
        commands.append(
            (
                "worker",
                [
                    "journalctl",
                    "--no-pager",
                    "-o",
                    "short-iso",
                    "-u",
                    WORKER_UNIT,
                    "-n",
                    str(args.lines),
                ]
                + (["-f"] if args.follow else []),
            )
        )
    return commands


def relay(name, command, wanted, lock):
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, errors="replace") as child:
        for line in child.stdout:
            if wanted is None or wanted in line:
                with lock:
                    print(f"{name:>12} | {line}", end="", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--file", action="append", help="a log file (repeatable)")
    parser.add_argument("--lines", type=int, default=20, help="lines of history per log")
    parser.add_argument("--follow", action="store_true", help="keep printing new lines")
    parser.add_argument("--request-id", help="only lines naming this request")
    args = parser.parse_args(argv)
    found = sources(args)
    if not found:
        print("no Beagle logs found on this host (give --file)", file=sys.stderr)
        return 1
    lock = threading.Lock()
    threads = [
        threading.Thread(target=relay, args=(name, command, args.request_id, lock), daemon=True)
        for name, command in found
    ]
    for thread in threads:
        thread.start()
        if not args.follow:
            thread.join()  # one log after the other when not following
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
