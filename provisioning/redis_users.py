"""Beagle's Redis users: one per role, each allowed only the commands and the keys its
role uses. The default user is off.

    web       the web tier: queues requests (XADD; the admission script may take them back
              with XDEL and push the refusal to the request's refusal list), reads the
              registry, waits for its answers (BLPOP pops them), adds its metrics. It
              cannot list or delete keys, write an answer, read or write another
              application's keys, or flush scripts or functions.
    worker    the workers: read, claim, acknowledge and delete requests, push answers,
              announce themselves in the registry, add their metrics. It cannot queue a
              request (no XADD).
    admin     the operators' tools (flush-queue, status, the rolling restart's wait) and
              redis-cli: Beagle's keys only, SCAN to find them, INFO and ROLE.
    replica   replication between Redis hosts (PSYNC, REPLCONF).
    sentinel  Redis Sentinel's monitoring and failover (Redis's documented minimum).

Sentinels have users of the same names and passwords: Beagle's roles may only ask them
where the master is (`sentinel_acl_line`); admin may also run a failover; the sentinel user
is how Sentinels log in to each other.

Each role's rules are a root set and Redis 7 selectors (``(…)``): a command is allowed on
a key only if one set names both, so the worker's DEL reaches its own status key and
never a stream. `acl_line` renders a role's user with its password's SHA-256, so the
Redis host's configuration holds no password in clear.
"""

import hashlib

from app.keys import Keys

ROLES = ("web", "worker", "admin", "replica", "sentinel")
CLIENTS = ("web", "worker", "admin")  # the roles Beagle's own processes log in as
CONNECTION = "+hello +auth +ping +select +client|setname +client|id"


def _patterns(access: str, *keys: str) -> str:
    """Key patterns with an access (``%R``, ``%W``, ``%RW``; "" for both)."""
    return " ".join(f"{access}~{key}" for key in keys)


def rules(role: str, keys: Keys) -> list[tuple[str, str]]:
    """[(commands, key patterns)] of ``role``: the root set first, then its selectors."""
    streams, results, metrics = keys.stream("*"), keys.result("*"), keys.metrics("*")
    refused = keys.refused("*")
    registry = (keys.models(), keys.model("*"), keys.live("*"), keys.workers())
    status = keys.worker("*")
    scripts = "+eval +evalsha +script|load"
    if role == "web":
        return [
            (CONNECTION, ""),
            (
                "+multi +exec +discard +xadd +xdel +xlen +xrange +xrevrange +xinfo|groups +time",
                _patterns("", streams),
            ),
            (scripts, _patterns("", streams, refused)),
            ("+lpush +expire", _patterns("", refused)),
            ("+blpop", _patterns("", results, refused)),
            (
                "+smembers +hgetall +zrange +zrangebyscore +mget",
                _patterns("%R", *registry, status),
            ),
            ("+hgetall +hincrby +hincrbyfloat +hset", _patterns("", metrics)),
        ]
    if role == "worker":
        return [
            (CONNECTION + " +info +time", ""),
            (
                "+xreadgroup +xack +xdel +xclaim +xautoclaim +xpending +xgroup|create "
                "+xgroup|delconsumer +xinfo|consumers",
                _patterns("", streams),
            ),
            ("+lpush +expire", _patterns("%W", results)),
            (
                f"{scripts} +sadd +hset +hdel +zadd +zrem +zrangebyscore +zremrangebyscore +expire",
                _patterns("", *registry),
            ),
            ("+set +get +del +exists", _patterns("", status)),
            ("+hincrby +hincrbyfloat +hset", _patterns("", metrics)),
        ]
    if role == "admin":
        return [
            (CONNECTION + " +info +role +scan +time", ""),
            (
                f"+xlen +xrange +xinfo +xtrim +xack +xdel +xpending +exists +type {scripts}",
                _patterns("", streams),
            ),
            ("+lpush +expire +del +exists +ttl", _patterns("", results)),
            (
                "+get +mget +smembers +hgetall +zrange +zrangebyscore +del +exists +ttl",
                _patterns("", *registry, status),
            ),
            ("+hgetall", _patterns("", metrics)),
        ]
    if role == "replica":
        return [("+psync +replconf +ping", "")]
    if role == "sentinel":
        return [
            (
                "+multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info "
                "+client|setname +client|kill +script|kill",
                "",
            )
        ]
    raise ValueError(f"no Redis role {role!r} (roles: {', '.join(ROLES)})")


SENTINEL_DISCOVERY = (
    "+hello +auth +ping +client|setname +client|id +sentinel|get-master-addr-by-name "
    "+sentinel|masters +sentinel|master +sentinel|sentinels +sentinel|replicas +sentinel|slaves"
)


def _hashed(role: str, password: str) -> str:
    if not password:
        raise ValueError(f"Redis role {role} needs a password")
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def sentinel_acl_line(role: str, password: str) -> str:
    """The ``user`` line of sentinel.conf for ``role``: discovery for Beagle's processes,
    everything (Sentinel's commands only) for admin and for the Sentinels themselves."""
    commands = "+@all" if role in ("admin", "sentinel") else SENTINEL_DISCOVERY
    return f"user {role} reset on {_hashed(role, password)} &* {commands}"


def acl_line(role: str, password: str, keys: Keys) -> str:
    """The ``user`` line of redis.conf for ``role``, its password as a SHA-256 hash."""
    channels = "&__sentinel__:*" if role == "sentinel" else "resetchannels"
    (root_commands, root_keys), *selectors = rules(role, keys)
    parts = [
        f"user {role} reset on {_hashed(role, password)} {channels} {root_commands} {root_keys}"
    ]
    parts += [f"({commands} {patterns})" for commands, patterns in selectors]
    return " ".join(" ".join(parts).split())
