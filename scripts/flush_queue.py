"""Empty Beagle's queues in Redis: its own keys only, never FLUSHALL.

Every queued request is answered with a 503 ("flushed by an operator") so no client
waits for its deadline, then removed; unread results are deleted. Streams are trimmed,
not deleted, so running workers keep their consumer groups. ``--all`` also clears the
registry (model metadata, live-worker sets, worker status), which live workers rebuild
within a second.

    python -m scripts.flush_queue [--all] [--dry-run]
"""

import argparse
import sys

from app import config
from app.keys import Keys
from app.queue import Queue, error_answer
from app.redis_connection import client as redis_client

FLUSHED = error_answer(503, "flushed from the queue by an operator")
REGISTRY_KINDS = ("model", "live", "worker")


def flush(client, keys, everything=False, dry_run=False, result_ttl=30):
    """What was removed: {"requests": {stream: n}, "results": n, "registry": n}."""
    removed = {"registry": 0}
    removed["results"] = _delete(client, keys.pattern("result"), dry_run)  # before answering
    removed["requests"] = Queue(client, keys).flush(FLUSHED, result_ttl, dry_run)
    if everything:
        removed["registry"] = sum(
            _delete(client, keys.pattern(kind), dry_run) for kind in REGISTRY_KINDS
        ) + sum(_delete(client, key, dry_run) for key in (keys.models(), keys.workers()))
    return removed


def _delete(client, pattern, dry_run):
    found = list(client.scan_iter(match=pattern, count=500))
    if found and not dry_run:
        client.delete(*found)
    return len(found)


def main(argv=None):
    settings = config.load()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also clear the worker registry")
    parser.add_argument("--dry-run", action="store_true", help="only say what would go")
    args = parser.parse_args(argv)
    client = redis_client(settings, socket_timeout=30)
    keys = Keys(settings.key_prefix)
    removed = flush(client, keys, args.all, args.dry_run, settings.result_ttl)
    verb = "would remove" if args.dry_run else "removed"
    for stream, count in sorted(removed["requests"].items()):
        print(
            f"{stream}: {verb} {count} queued requests"
            + ("" if args.dry_run else " (each answered 503)")
        )
    print(f"{keys.pattern('result')}: {verb} {removed['results']} unread results")
    if args.all:
        print(
            f"registry ({', '.join(keys.pattern(k) for k in REGISTRY_KINDS)}): "
            f"{verb} {removed['registry']} keys"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
