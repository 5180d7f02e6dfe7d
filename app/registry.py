"""Which models are served, in which versions and input sizes, by which live workers.

Workers write it (`announce` on every heartbeat, `retire` on exit); the web tier reads
it (`Directory`), so web hosts need no model files, only Redis. Each worker announces
the versions it holds; the web serves, per model, the union of its live workers'
versions (a worker is live while its last heartbeat is younger than heartbeat_ttl), so
workers on different versions (one pinned, a rolling deploy) are all served.
"""

import json
import threading
import time
from typing import Any, Self, cast

import redis
from redis.client import Pipeline

from app.keys import Keys
from app.turns import Turn

MODEL_TTL = 24 * 3600  # what no worker has announced for a day disappears
DIRECTORY_MAX_AGE_S = 1.0  # how stale a web process's view of the announced models may be
ACTIVE_S = 3.0  # a worker heartbeats every second, even mid-batch, while it consumes

# KEYS: the models set, the model's hash, its live set; ARGV: model, worker, what it holds,
# now, heartbeat_ttl, MODEL_TTL. Workers whose heartbeat aged out leave both.
ANNOUNCE = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. (ARGV[4] - ARGV[5]))
for _, worker in ipairs(gone) do
  redis.call('ZREM', KEYS[3], worker)
  redis.call('HDEL', KEYS[2], worker)
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[6]) end
"""


def announce(
    pipe: Pipeline,
    keys: Keys,
    worker_id: str,
    models: dict[str, dict[str, Any]],
    status: dict[str, Any],
    ttl: float,
) -> None:
    """Add the heartbeat to ``pipe``: ``models`` maps name ->
    {"versions": {v: {"shape": [h, w, c], ...}}, "latest": v}."""
    now = time.time()
    for name, held in models.items():
        pipe.eval(
            ANNOUNCE,
            3,
            keys.models(),
            keys.model(name),
            keys.live(name),
            name,
            worker_id,
            json.dumps(held),
            now,
            ttl,
            MODEL_TTL,
        )
    pipe.set(keys.worker(worker_id), json.dumps(status), ex=max(1, int(ttl)))
    pipe.zadd(keys.workers(), {worker_id: now})
    pipe.zremrangebyscore(keys.workers(), "-inf", f"({now - ttl}")
    pipe.expire(keys.workers(), MODEL_TTL)


def status(client: redis.Redis, keys: Keys, worker_id: str) -> dict[str, Any]:
    """The status the worker last announced; {} if it retired or its status expired."""
    raw = cast(bytes | None, client.get(keys.worker(worker_id)))
    return json.loads(raw) if raw else {}


def retire(client: redis.Redis, keys: Keys, worker_id: str) -> None:
    """A worker stopping on purpose drops its status, but keeps counting as live until its
    heartbeat ages out: requests that arrive while it restarts wait for it, not fail."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(keys.worker(worker_id))
    pipe.zrem(keys.workers(), worker_id)
    pipe.execute()


class ModelInfo:
    """A model as the web serves it: ``versions`` {v: spec} that its live workers hold
    (or, while none is live, that its workers last held); ``live_workers`` heartbeated
    within heartbeat_ttl (requests wait for them), ``active_workers`` within ACTIVE_S
    (they are taking requests right now)."""

    def __init__(
        self,
        name: str,
        versions: dict[int, dict[str, Any]],
        live_workers: int,
        active_workers: int,
    ) -> None:
        self.name = name
        self.versions = versions
        self.live_workers = live_workers
        self.active_workers = active_workers

    @property
    def latest(self) -> int:
        return max(self.versions)

    def shape(self, version: int) -> tuple[int, int, int]:
        return tuple(self.versions[version]["shape"])

    @classmethod
    def from_redis(
        cls,
        name: str,
        announced: dict[str, bytes],
        heartbeats: list[tuple[str, float]],
        now: float,
        heartbeat_ttl: float,
    ) -> Self:
        """From the model's hash {worker: JSON} and live set [(worker, time)]."""
        live = {worker for worker, seen in heartbeats if seen >= now - heartbeat_ttl}
        active = sum(seen >= now - ACTIVE_S for _, seen in heartbeats)
        held = [json.loads(meta) for worker, meta in announced.items() if worker in live]
        versions: dict[int, dict[str, Any]] = {}
        for meta in held or map(json.loads, announced.values()):
            versions.update((int(v), spec) for v, spec in meta["versions"].items())
        return cls(name, versions, len(live), active)


class Directory:
    """The web tier's view of the registry: the announced models, read from Redis at
    most every ``max_age`` seconds per process. Names no worker announced are never
    looked up or kept, however many clients ask for. A model Redis forgets (restarted,
    flushed) stays known, with no live worker, until a worker announces it again or a day
    passes: its requests get 503, not "not served"."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        heartbeat_ttl: float,
        max_age: float = DIRECTORY_MAX_AGE_S,
        turn: Turn | None = None,
    ) -> None:
        self.turn = turn or Turn()  # a web process's turn, handed on while Redis answers
        self.redis = client
        self.keys = keys
        self.heartbeat_ttl = heartbeat_ttl
        self.max_age = max_age
        self._models: dict[str, ModelInfo] = {}
        # name -> (ModelInfo, monotonic time Redis last had it)
        self._seen: dict[str, tuple[ModelInfo, float]] = {}
        self._fetched = float("-inf")
        self._lock = threading.Lock()

    def lookup(self, name: str) -> ModelInfo | None:
        """ModelInfo for ``name``, or None if no worker has announced it."""
        return self._snapshot().get(name)

    def models(self) -> list[ModelInfo]:
        """Every announced model, fresh from Redis."""
        return sorted(self._snapshot(fresh=True).values(), key=lambda info: info.name)

    def workers(self) -> list[dict[str, Any]]:
        """Status dicts of the live workers."""
        since = time.time() - self.heartbeat_ttl
        ids = cast(list[bytes], self.redis.zrangebyscore(self.keys.workers(), since, "+inf"))
        keys = [self.keys.worker(worker_id.decode()) for worker_id in ids]
        return [json.loads(raw) for raw in self.redis.mget(keys) if raw] if keys else []

    def last_known(self, max_age: float) -> list[ModelInfo] | None:
        """The models as last read from Redis, if that was within ``max_age`` seconds."""
        with self._lock:
            if time.monotonic() - self._fetched > max_age:
                return None
            return sorted(self._models.values(), key=lambda info: info.name)

    def _snapshot(self, fresh: bool = False) -> dict[str, ModelInfo]:
        with self._lock:
            if not fresh and time.monotonic() - self._fetched < self.max_age:
                return self._models
        # Outside the lock, and the turn handed on: a slow Redis must not queue every thread.
        with self.turn.aside(lambda: self.max_age):
            models = self._fetch()
        now = time.monotonic()
        with self._lock:
            self._seen = {
                name: seen for name, seen in self._seen.items() if now - seen[1] < MODEL_TTL
            }
            self._seen.update((name, (info, now)) for name, info in models.items())
            lost = {
                name: ModelInfo(name, info.versions, 0, 0)
                for name, (info, _) in self._seen.items()
                if name not in models
            }
            self._models, self._fetched = {**lost, **models}, now
            return self._models

    def _fetch(self) -> dict[str, ModelInfo]:
        # redis-py types replies as bytes | str; this client gets bytes
        names = sorted(name.decode() for name in self.redis.smembers(self.keys.models()))  # type: ignore[union-attr]
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.model(name))
            pipe.zrange(self.keys.live(name), 0, -1, withscores=True)
        replies, now = pipe.execute(), time.time()
        models: dict[str, ModelInfo] = {}
        for name, announced, heartbeats in zip(names, replies[::2], replies[1::2], strict=True):
            if announced:
                models[name] = ModelInfo.from_redis(
                    name,
                    {w.decode(): meta for w, meta in announced.items()},
                    [(w.decode(), seen) for w, seen in heartbeats],
                    now,
                    self.heartbeat_ttl,
                )
        return models
