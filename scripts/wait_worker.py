"""Wait until a worker heartbeats in Redis, having started after a given time: what a
rolling restart waits for before it restarts the next worker. Reads BEAGLE_* settings.

    python -m scripts.wait_worker --name gpu1-0 --since 1795330000.5 --timeout 300
"""

import argparse
import sys
import time

import redis

from app import config, registry
from app.keys import Keys
from app.redis_connection import client as redis_client


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the worker's name (BEAGLE_WORKER_NAME)")
    parser.add_argument("--since", type=float, default=0.0, help="epoch seconds")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    settings = config.load()
    client = redis_client(settings, socket_timeout=5)
    keys = Keys(settings.key_prefix)
    give_up = time.monotonic() + args.timeout
    while time.monotonic() < give_up:
        try:
            status = registry.status(client, keys, args.name)
        except (redis.ConnectionError, redis.TimeoutError):  # Redis restarting: wait on
            status = {}
        if status.get("started", 0) >= args.since and status.get("models"):
            print(f"worker {args.name} is serving {', '.join(status['models'])}")
            return 0
        time.sleep(0.5)
    print(f"worker {args.name} did not come up within {args.timeout:g}s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
