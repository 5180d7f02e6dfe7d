"""Which models are served, in which versions and input sizes, by which live workers.

Workers write it (`announce` on every heartbeat, `retire` on exit); the web tier reads
it (`Directory`), so web hosts need no model files, only Redis. A worker counts as live
for a model while its last heartbeat is younger than ``heartbeat_ttl``.
"""
import json
import threading
import time

MODEL_TTL = 24 * 3600  # metadata of a model no worker has announced for a day disappears


def announce(pipe, keys, worker_id, models, status, ttl):
    """Add the heartbeat to ``pipe``: ``models`` maps name ->
    {"versions": {v: {"shape": [h, w, c], ...}}, "latest": v}."""
    now = time.time()
    for name, meta in models.items():
        pipe.set(keys.model(name), json.dumps(meta), ex=MODEL_TTL)
        pipe.zadd(keys.live(name), {worker_id: now})
        pipe.zremrangebyscore(keys.live(name), "-inf", now - ttl)
        pipe.expire(keys.live(name), MODEL_TTL)
    pipe.set(keys.worker(worker_id), json.dumps(status), ex=max(1, int(ttl)))


def retire(client, keys, worker_id):
    """A worker stopping on purpose drops its status, but keeps counting as live until its
    heartbeat ages out: requests that arrive while it restarts wait for it, not fail."""
    client.delete(keys.worker(worker_id))


ACTIVE_S = 3.0  # a worker heartbeats every second, even mid-batch, while it consumes


class ModelInfo:
    """``live_workers`` heartbeated within heartbeat_ttl (requests wait for them);
    ``active_workers`` within ACTIVE_S (they are taking requests right now)."""

    def __init__(self, name, meta, live_workers, active_workers):
        self.name = name
        self.versions = {int(v): spec for v, spec in meta["versions"].items()}
        self.latest = int(meta["latest"])
        self.live_workers = live_workers
        self.active_workers = active_workers

    def shape(self, version):
        return tuple(self.versions[version]["shape"])


class Directory:
    """The web tier's view of the registry, cached per process for ``max_age`` seconds."""

    def __init__(self, client, keys, heartbeat_ttl, max_age=1.0):
        self.redis = client
        self.keys = keys
        self.heartbeat_ttl = heartbeat_ttl
        self.max_age = max_age
        self._cache = {}
        self._seen = {}  # last metadata of every model this process has seen announced
        self._lock = threading.Lock()

    def lookup(self, name):
        """ModelInfo for ``name``, or None if no worker has announced it."""
        with self._lock:
            cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < self.max_age:
            return cached[1]
        info = self.fetch(name)
        with self._lock:
            self._cache[name] = (time.monotonic(), info)
        return info

    def fetch(self, name):
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.model(name))
        pipe.zcount(self.keys.live(name), now - self.heartbeat_ttl, "+inf")
        pipe.zcount(self.keys.live(name), now - ACTIVE_S, "+inf")
        meta, live, active = pipe.execute()
        if meta is not None:
            self._seen[name] = meta
        elif name in self._seen:  # Redis lost it (restarted, flushed): not served *now*
            meta, live, active = self._seen[name], 0, 0
        return None if meta is None else ModelInfo(name, json.loads(meta), live, active)

    def models(self):
        """Every announced model, fresh from Redis."""
        names = sorted(self.keys.name_in(key.decode(), "model")
                       for key in self.redis.scan_iter(match=self.keys.pattern("model"),
                                                       count=100))
        return [info for info in map(self.fetch, names) if info is not None]

    def workers(self):
        """Status dicts of the live workers."""
        keys = list(self.redis.scan_iter(match=self.keys.pattern("worker"), count=100))
        return [json.loads(raw) for raw in self.redis.mget(keys) if raw] if keys else []
