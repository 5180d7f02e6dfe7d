"""How Beagle reaches Redis: the one home of its URL's shape and of the clients every part
of Beagle uses.

One Redis: ``redis_url`` (redis://user:password@host:port/db; rediss://… with
?ssl_ca_certs=… over TLS between hosts). Redis with Sentinel: ``redis_sentinels`` lists the
Sentinels (host:port,…), which say where the master named ``redis_master`` is now;
``redis_url`` then gives the user, the password, the database and TLS, and its host is not
used. The same user and password log in to the Sentinels, whose users may only ask where
the master is (provisioning/redis_users.py).

Clients fail fast: a second to connect, so a request gets a 503 at once rather than waiting
out an outage; with one Redis, one immediate retry (a pooled connection may be stale after
Redis restarted), except for a submit (`exec_then_pop`), which is never sent twice: the pool
itself replaces a connection Redis closed, so only one whose peer vanished without closing it
(a host gone) costs that request a 503. With Sentinel, every new connection asks the
Sentinels where the master is (all of them: the newest configuration wins, as one that has
not yet heard of a switchover still names the demoted master), and a connection to a
master since demoted (it answers READONLY) is dropped; no command is retried behind the
caller's back, so the web tier knows when a wait broke and queues its request again on the
new master (app/web/dispatch.py).
"""

import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import Encoder, PythonRespSerializer, SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

# XAUTOCLAIM, which hands a dead worker's requests to a live one, came in Redis 6.2.
MIN_REDIS_VERSION = (6, 2)
CONNECT_TIMEOUT_S = 1.0
SENTINEL_REST_S = 10.0


def master_changed(exc: Exception) -> bool:
    """Whether ``exc`` means the master went away or stepped down, so asking the Sentinels
    again is the cure: a dropped connection, a timeout, or a blocking read that Redis ended
    because it became a replica (``UNBLOCKED``, which a planned switchover sends; redis-py
    words a pipeline's error "Command # N (...) of pipeline caused error: UNBLOCKED ...")."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return True
    message = str(exc)
    return isinstance(exc, redis.ResponseError) and (
        message.startswith("UNBLOCKED") or " of pipeline caused error: UNBLOCKED" in message
    )


def master_address(client: redis.Redis) -> tuple[str, int] | None:
    """Where ``client``'s connections last found the master the Sentinels name (None with
    one Redis): known in the process, no round trip."""
    return getattr(client.connection_pool, "master_address", None)


def follow_master(client: redis.Redis) -> None:
    """Under Sentinel, ask where the master is now; if it moved, the pool drops its idle
    connections, so the next command goes to the new one. For long-lived clients (a
    worker): in a switchover the old master keeps answering until the Sentinels demote it,
    while web processes already queue on the new one."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        pool.get_master_address()


def redis_url(user: str, password: str, host: str, port: int, db: int = 0, tls_ca: str = "") -> str:
    """Beagle's Redis URL for ``user`` (a role's Redis user, provisioning/redis_users.py);
    with ``tls_ca``, the file of the CA whose certificate Redis's must carry, over TLS."""
    host = f"[{host}]" if ":" in host else host
    scheme, query = ("rediss", f"?ssl_ca_certs={quote(tls_ca)}") if tls_ca else ("redis", "")
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}{query}"


def url_password(url: str) -> str | None:
    password = urlsplit(url).password
    return unquote(password) if password else None


def sentinel_addresses(text: str) -> list[tuple[str, int]]:
    """ "10.0.0.5:26380,10.0.0.6:26380" -> [("10.0.0.5", 26380), ("10.0.0.6", 26380)]."""
    found = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = item.rpartition(":")
        found.append((host.strip("[]"), int(port)))
    return found


# redis-py's pure-Python packer sends a large argument (a request's pixels) as a buffer of
# its own; hiredis's, its default when hiredis is installed, copies every command into one
# new bytes object first, a copy per request the web tier pays under its GIL. Stateless, so
# one serves every connection. 6000: the size past which redis-py sends an argument apart.
PACKER = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)


def connect(
    url: str,
    socket_timeout: float,
    sentinels: str = "",
    master: str = "beagle",
    max_connections: int | None = None,
) -> redis.Redis:
    """A client of Redis at ``url``, or of the master the ``sentinels`` name, that fails
    fast when Redis is down, with a pool of up to ``max_connections`` (None: redis-py's
    default, 100)."""
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0 if sentinels else 1),
        "health_check_interval": 0,
        "protocol": 2,  # RESP2: what every Redis speaks, so a too-old one gets a clear message
        "command_packer": PACKER,
    }
    if not sentinels:
        return redis.Redis.from_url(url, **options)
    return sentinel_for(url, sentinels).master_for(master, **options)


class NewestSentinel(Sentinel):
    """redis-py's Sentinel, but the master is the one named in the newest configuration
    (highest config-epoch) of the Sentinels that answer, not the first one's: for a second
    or two after a switchover the others still name the old master, which, demoted, would
    serve reads from a replica no one writes to. A Sentinel that failed is skipped for
    SENTINEL_REST_S, so a dead or unreachable one does not slow every discovery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed_at: dict[int, float] = {}  # a Sentinel's index -> when it last failed

    def discover_master(self, service_name: str) -> tuple[str, int]:
        found, errors = [], []
        now = time.monotonic()
        resting = {i for i, at in self.failed_at.items() if now - at < SENTINEL_REST_S}
        asked = [i for i in range(len(self.sentinels)) if i not in resting] or list(resting)
        for index in asked:
            sentinel = self.sentinels[index]
            try:
                state = sentinel.sentinel_masters().get(service_name)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                self.failed_at[index] = time.monotonic()
                continue
            self.failed_at.pop(index, None)
            if state and self.check_master_state(state, service_name):
                found.append(state)
        if not found:
            raise MasterNotFoundError(f"No master found for {service_name!r}: {errors}")
        newest = max(found, key=lambda state: state["config-epoch"])
        return newest["ip"], newest["port"]


def sentinel_for(url: str, sentinels: str) -> Sentinel:
    """redis-py's Sentinel for ``sentinels``, logging in to them, and to the master they
    name, with ``url``'s user, password and TLS."""
    options = parse_url(url)
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    login = {k: options[k] for k in ("username", "password") if k in options}
    tls = {k: v for k, v in options.items() if k.startswith("ssl")}
    return NewestSentinel(
        sentinel_addresses(sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": 2.0,
            "retry": Retry(NoBackoff(), 0),  # another Sentinel answers; never wait on one
            **login,
            **tls,
        },
        **options,
    )


def client(settings: Any, socket_timeout: float, max_connections: int | None = None) -> redis.Redis:
    """The client for ``settings`` (redis_url, redis_sentinels, redis_master)."""
    return connect(
        settings.redis_url,
        socket_timeout,
        settings.redis_sentinels,
        settings.redis_master,
        max_connections,
    )


def version_problem(version: str) -> str | None:
    """None if a Redis of ``version`` ("7.0.15") runs Beagle, else what is wrong."""
    found = tuple(int(part) for part in version.split(".")[:2])
    if found >= MIN_REDIS_VERSION:
        return None
    need = ".".join(map(str, MIN_REDIS_VERSION))
    return (
        f"Redis {version} is too old: Beagle needs {need} or newer (XAUTOCLAIM, which "
        f"recovers a dead worker's requests); install a newer redis-server"
    )


def server_version(client: redis.Redis) -> str:
    """The version of the Redis ``client`` reaches (over RESP2, Beagle's clients' protocol,
    which every Redis speaks: redis-py's RESP3 handshake fails before Redis 6)."""
    return client.info("server")["redis_version"]


def exec_then_pop(
    client: redis.Redis, transaction: list[tuple], keys: list[str], timeout: float
) -> tuple[list[Any], Any]:
    """Send MULTI, ``transaction``, EXEC and (with ``keys``) a BLPOP of them for up to
    ``timeout`` seconds, in one write; return EXEC's replies and the pop's (None: nothing
    came, or Redis refused the pop, which the caller's next wait may meet). An error in
    the transaction raises at once. Nothing is sent twice: after EXEC ran, a retry would
    apply it again. By hand, as redis-py's transaction would take the BLPOP inside MULTI,
    where it does not block. A connection that fails midway is dropped, which also ends
    its BLPOP on the server."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        pop = [("BLPOP", *keys, timeout)] if keys else []
        connection.send_packed_command(
            connection.pack_commands([("MULTI",), *transaction, ("EXEC",), *pop])
        )
        executed = _exec_replies(connection, len(transaction))
        try:
            return executed, connection.read_response() if pop else None
        except redis.ResponseError:  # a whole reply: the connection is sound
            return executed, None
    except BaseException as exc:
        # A Redis error is a whole reply, so the connection is sound, unless a BLPOP
        # follows the failed transaction: dropping the connection ends it.
        if pop or not isinstance(exc, redis.ResponseError):
            connection.disconnect()
        raise
    finally:
        pool.release(connection)


def _exec_replies(connection: Any, queued: int) -> list[Any]:
    """EXEC's replies, read after MULTI's and the ``queued`` commands' acknowledgements.
    Raises the first error: a command refused as it was queued (out of memory, denied),
    which aborts the EXEC, or one that failed inside it."""
    refused = []
    for _ in range(queued + 1):
        try:
            connection.read_response()
        except redis.ResponseError as exc:
            refused.append(exc)
    try:
        executed = connection.read_response()
    except redis.ResponseError as aborted:  # EXECABORT
        raise (refused[0] if refused else aborted) from None
    failed = [reply for reply in executed if isinstance(reply, Exception)]
    if failed:
        raise failed[0]
    return executed
