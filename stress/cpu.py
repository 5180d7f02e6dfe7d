"""CPU time by part of a serving stack, from /proc: what a request costs each part.

A part is a set of processes (or, for the worker, of threads): `snapshot` reads their
CPU seconds (user + system) now, and the difference of two snapshots over a run, divided
by the requests served, is each part's CPU milliseconds per request. Processes that start
during the run count from zero; none of a stack's processes ends during one.
"""

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
WSGI_TITLE = b"(wsgi:"  # mod_wsgi's daemon processes (display-name=%{GROUP})


def _stat(path):
    """(comm, parent pid, cpu seconds) from a /proc .../stat file."""
    text = Path(path).read_text()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def reaped_seconds(pid):
    """CPU seconds of ``pid``'s children that exited and it reaped (Apache retires idle
    children while a level runs: their time would otherwise vanish from the sum)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICKS


def group_alive(group):
    """Whether a process of process group ``group`` is alive (not a zombie)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _, pgrp = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == group and state != "Z":
            return True
    return False


def process_seconds(pid):
    try:
        return _stat(f"/proc/{pid}/stat")[2]
    except (OSError, ValueError):
        return 0.0


def children(pid):
    """PIDs whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if _stat(stat)[1] == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


def descendants(pid):
    found, frontier = [], [pid]
    while frontier:
        kids = [kid for parent in frontier for kid in children(parent)]
        found += kids
        frontier = kids
    return found


def is_wsgi_daemon(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(WSGI_TITLE)
    except OSError:
        return False


def main_thread_seconds(pid):
    """CPU of a process's main thread alone (the worker's loop: Redis, batching,
    answers); its other threads run the forward pass and the runtime's pools."""
    try:
        return _stat(f"/proc/{pid}/task/{pid}/stat")[2]
    except (OSError, ValueError):
        return 0.0


def beagle_parts(apache_pid, worker_pids, redis_pid):
    """{part: CPU seconds now} for Beagle: Apache's own processes, the mod_wsgi daemons,
    Redis, the workers' loops and their forward passes."""
    apache_children = children(apache_pid)
    loop = sum(main_thread_seconds(pid) for pid in worker_pids)
    return {
        "apache": process_seconds(apache_pid)
        + reaped_seconds(apache_pid)
        + sum(process_seconds(pid) for pid in apache_children if not is_wsgi_daemon(pid)),
        "mod_wsgi": sum(process_seconds(pid) for pid in apache_children if is_wsgi_daemon(pid)),
        "redis": process_seconds(redis_pid),
        "worker loop": loop,
        "forward pass": sum(process_seconds(pid) for pid in worker_pids) - loop,
    }


def tree_parts(pid, name):
    """{name: CPU seconds now} of a process and all its descendants (a peer server)."""
    return {name: process_seconds(pid) + sum(process_seconds(kid) for kid in descendants(pid))}


def per_request_ms(before, after, requests):
    """{part: CPU ms per request} between two snapshots."""
    return {part: (after[part] - before.get(part, 0.0)) * 1000 / max(1, requests) for part in after}


def rss_mb(pid):
    """Resident memory of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
