"""Redis with Sentinel, as an operator sees it, on a Redis host with the admin user's
settings (fab status and fab redis-failover run it there):

    python -m scripts.redis_ha status     # the master, each replica's lag, each Sentinel's view
    python -m scripts.redis_ha master     # host:port of the master (for the deploy)
    python -m scripts.redis_ha failover   # a planned switchover: SENTINEL FAILOVER, then wait

Reads BEAGLE_* settings: redis_sentinels, redis_master and redis_url (whose user,
password and TLS log in to the Sentinels and to Redis).
"""

import argparse
import sys
import time

import redis

from app import config
from app.redis_connection import client as redis_client
from app.redis_connection import sentinel_for

FAILOVER_WAIT_S = 60


def master_address(sentinel, name):
    host, port = sentinel.discover_master(name)
    return f"{host}:{port}"


def status(settings, sentinel):
    name = settings.redis_master
    print(f"master {name}: {master_address(sentinel, name)}")
    replication = redis_client(settings, socket_timeout=5).info("replication")
    offset = replication.get("master_repl_offset", 0)
    for key in sorted(k for k in replication if k.startswith("slave")):
        replica = replication[key]
        print(
            f"replica {replica['ip']}:{replica['port']}: {replica['state']}, "
            f"{offset - int(replica['offset'])} bytes and {replica['lag']} s behind"
        )
    for each in sentinel.sentinels:
        host = each.connection_pool.connection_kwargs["host"]
        try:
            seen = each.sentinel_get_master_addr_by_name(name)
            quorum = each.execute_command("SENTINEL", "CKQUORUM", name)
            print(f"sentinel {host}: sees master {_text(seen[0])}:{seen[1]}; {_text(quorum)}")
        except redis.RedisError as exc:
            print(f"sentinel {host}: unreachable ({type(exc).__name__}: {exc})")


def failover(settings, sentinel):
    name = settings.redis_master
    before = master_address(sentinel, name)
    sentinel.sentinels[0].execute_command("SENTINEL", "FAILOVER", name)
    give_up = time.monotonic() + FAILOVER_WAIT_S
    while time.monotonic() < give_up:
        now = master_address(sentinel, name)
        if (
            now != before
            and redis_client(settings, socket_timeout=5).info("replication")["role"] == "master"
        ):
            print(f"switched over: master {name} was {before}, now {now}")
            return 0
        time.sleep(0.5)
    print(f"no new master for {name} within {FAILOVER_WAIT_S}s (still {before})", file=sys.stderr)
    return 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("status", "master", "failover"))
    args = parser.parse_args(argv)
    settings = config.load()
    if not settings.redis_sentinels:
        print("no Sentinels: BEAGLE_REDIS_SENTINELS is empty (one Redis host)", file=sys.stderr)
        return 1
    sentinel = sentinel_for(settings.redis_url, settings.redis_sentinels)
    if args.action == "master":
        print(master_address(sentinel, settings.redis_master))
        return 0
    if args.action == "failover":
        return failover(settings, sentinel)
    status(settings, sentinel)
    return 0


def _text(value: bytes | str) -> str:
    """A Sentinel's reply as text (its clients do not decode replies)."""
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    sys.exit(main())
