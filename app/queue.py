"""The Redis queue protocol between the web tier and the workers.

Web:    `submit` adds a request to the model's stream unless the backlog is at its bound
        or the queue is already slower than allowed (one atomic Lua call), then
        `wait_result` blocks on the request's result list.
Worker: `read_new` takes new entries for its consumer (XREADGROUP, blocking with a
        timeout), `claim_stale` takes entries a dead worker left pending (XAUTOCLAIM),
        `reclaim_own` takes back what this consumer held before it was restarted,
        `reply` pushes every answer, acknowledges and deletes the entries (in the
        pipeline the worker sends once per batch).

An entry carries the request id, its absolute deadline, the version asked for ("" =
newest), top_k (0 = the whole probability vector) and uint8 pixels of shape h,w,c.
An answer is JSON: {"ok": true, "model", "version", "predictions" | "probabilities"}
or {"ok": false, "status": <http status>, "error": "<what and why>"}.
"""
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.keys import GROUP

# Admission, atomically: refuse when the stream holds max_queue entries, or when the
# oldest entry no worker has taken yet has waited max_wait_ms (then whatever is admitted
# now would wait at least as long). Ages come from Redis's clock and entry ids, so web
# hosts' clocks do not matter. KEYS[1] stream; ARGV: max_queue, max_wait_ms, group, fields.
SUBMIT_SCRIPT = """
local length = redis.call('XLEN', KEYS[1])
if length >= tonumber(ARGV[1]) then return {'full', length} end
if length > 0 then
  local after = '-'
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
  if ok then
    for _, group in ipairs(groups) do
      local info = {}
      for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
      if info['name'] == ARGV[3] then after = '(' .. info['last-delivered-id'] end
    end
  end
  local head = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)
  if #head > 0 then
    local now = redis.call('TIME')
    local waited = now[1] * 1000 + math.floor(now[2] / 1000)
                   - tonumber(string.match(head[1][1], '^(%d+)'))
    if waited >= tonumber(ARGV[2]) then return {'slow', waited} end
  end
end
return {'ok', redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))}
"""


# XAUTOCLAIM, which hands a dead worker's requests to a live one, came in Redis 6.2.
MIN_REDIS_VERSION = (6, 2)


def redis_url(password, host, port, db=0):
    """Beagle's Redis URL: the default user, with its password."""
    host = f"[{host}]" if ":" in host else host
    return f"redis://:{password}@{host}:{port}/{db}"


def url_password(url):
    return urlsplit(url).password


def version_problem(version):
    """None if a Redis of ``version`` ("7.0.15") runs Beagle, else what is wrong."""
    found = tuple(int(part) for part in version.split(".")[:2])
    if found >= MIN_REDIS_VERSION:
        return None
    need = ".".join(map(str, MIN_REDIS_VERSION))
    return (f"Redis {version} is too old: Beagle needs {need} or newer (XAUTOCLAIM, which "
            f"recovers a dead worker's requests); install a newer redis-server")


def server_version(url):
    """The version of the Redis at ``url``, asked over RESP2, which every Redis speaks
    (redis-py's RESP3 handshake, HELLO, fails before Redis 6)."""
    client = redis.Redis.from_url(url, protocol=2, socket_connect_timeout=1.0, socket_timeout=5)
    try:
        return client.info("server")["redis_version"]
    finally:
        client.close()


def connect(url, socket_timeout):
    """A client that fails fast when Redis is down: 1 s to connect, one immediate retry."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1), health_check_interval=0)


@dataclass
class Request:
    request_id: str
    deadline: float
    version: str
    top_k: int
    shape: tuple
    pixels: bytes

    def fields(self):
        return {"id": self.request_id, "deadline": repr(self.deadline), "version": self.version,
                "top_k": self.top_k, "shape": ",".join(map(str, self.shape)),
                "pixels": self.pixels}


@dataclass
class Entry:
    """A request as a worker sees it: where it came from and how often it was delivered.

    ``request`` is None when the entry could not be decoded; ``problem`` then says why
    and ``request_id`` is whatever id could be read ("" if none).
    """
    model: str
    entry_id: bytes
    request: Request | None
    deliveries: int = 1
    problem: str = ""
    request_id: str = ""


class Queue:
    def __init__(self, client, keys):
        self.redis = client
        self.keys = keys
        self._submit = client.register_script(SUBMIT_SCRIPT)

    # -- web side ------------------------------------------------------------------

    def submit(self, model, request, max_queue, max_wait_s):
        """Queue ``request``: None, or (reason, why) when refused, reason being "full"
        (max_queue entries) or "slow" (the oldest waiting one waited max_wait_s)."""
        args = [max_queue, int(max_wait_s * 1000), GROUP]
        for name, value in request.fields().items():
            args += [name, value]
        verdict, detail = self._submit(keys=[self.keys.stream(model)], args=args)
        if verdict == b"ok":
            return None
        if verdict == b"full":
            return "full", f"model {model!r} has {detail} requests waiting"
        return "slow", f"model {model!r}'s oldest waiting request has waited {detail / 1000:.1f}s"

    def wait_results(self, request_ids, remaining):
        """The answers for ``request_ids``, in their order, as many as arrived while
        ``remaining()`` (seconds left) stayed positive."""
        keys = {self.keys.result(request_id): request_id for request_id in request_ids}
        answers = {}
        # Below 1 ms, Redis would round the timeout down to 0, which means "forever".
        while len(answers) < len(keys) and (left := remaining()) >= 0.001:
            waiting = [key for key, request_id in keys.items() if request_id not in answers]
            popped = self.redis.blpop(waiting, timeout=left)
            if popped is None:
                break
            answers[keys[popped[0].decode()]] = json.loads(popped[1])
        return [answers[request_id] for request_id in request_ids if request_id in answers]

    def wait_result(self, request_id, timeout):
        """The answer for ``request_id``, or None if none arrived within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        answers = self.wait_results([request_id], lambda: deadline - time.monotonic())
        return answers[0] if answers else None

    def backlog(self, model):
        return self.redis.xlen(self.keys.stream(model))

    # -- worker side ----------------------------------------------------------------

    def ensure_group(self, model):
        """Create the consumer group (and stream); entries queued before it are kept."""
        try:
            self.redis.xgroup_create(self.keys.stream(model), GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def prune_consumers(self, model, idle_s):
        """Forget consumers (dead workers) with nothing pending and idle for ``idle_s``."""
        stream = self.keys.stream(model)
        for consumer in self.redis.xinfo_consumers(stream, GROUP):
            if consumer["pending"] == 0 and consumer["idle"] > idle_s * 1000:
                self.redis.xgroup_delconsumer(stream, GROUP, consumer["name"])

    def read_new(self, models, consumer, count, block_ms):
        """Up to ``count`` new entries across ``models``, waiting at most ``block_ms``."""
        streams = {self.keys.stream(model): ">" for model in models}
        replies = self.redis.xreadgroup(GROUP, consumer, streams, count=count, block=block_ms)
        entries = []
        for stream, messages in replies or ():
            model = self.keys.name_in(stream.decode(), "stream")
            entries += [self._entry(model, entry_id, fields) for entry_id, fields in messages
                        if fields]
        return entries

    def reclaim_own(self, model, consumer, count):
        """Entries this consumer took before a restart and never acknowledged."""
        stream = self.keys.stream(model)
        pending = self.redis.xpending_range(stream, GROUP, "-", "+", count,
                                            consumername=consumer)
        if not pending:
            return []
        counts = {item["message_id"]: item["times_delivered"] + 1 for item in pending}
        claimed = self.redis.xclaim(stream, GROUP, consumer, 0, list(counts))
        return [self._entry(model, entry_id, fields, counts[entry_id])
                for entry_id, fields in claimed if fields]

    def claim_stale(self, model, consumer, min_idle_s, count):
        """Entries idle longer than ``min_idle_s`` in any consumer, now ours, with counts."""
        stream = self.keys.stream(model)
        claimed = self.redis.xautoclaim(stream, GROUP, consumer, int(min_idle_s * 1000),
                                        start_id="0-0", count=count)
        messages = [(entry_id, fields) for entry_id, fields in claimed[1] if fields]
        if not messages:
            return []
        pending = self.redis.xpending_range(stream, GROUP, min=messages[0][0],
                                            max=messages[-1][0], count=len(messages) * 4,
                                            consumername=consumer)
        counts = {item["message_id"]: item["times_delivered"] for item in pending}
        return [self._entry(model, entry_id, fields, counts.get(entry_id, 2))
                for entry_id, fields in messages]

    def reply(self, pipe, answers, skipped, result_ttl):
        """Add to ``pipe``: push each (entry, answer); acknowledge and delete those and
        the ``skipped``."""
        for entry, answer in answers:
            key = self.keys.result(entry.request_id)
            pipe.lpush(key, json.dumps(answer))
            pipe.expire(key, max(1, int(result_ttl)))
        by_stream = {}
        for entry in [entry for entry, _ in answers] + list(skipped):
            by_stream.setdefault(self.keys.stream(entry.model), []).append(entry.entry_id)
        for stream, ids in by_stream.items():
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)

    @staticmethod
    def _entry(model, entry_id, fields, deliveries=1):
        request_id = fields.get(b"id", b"").decode("utf-8", "replace")
        try:
            shape = tuple(int(n) for n in fields[b"shape"].split(b","))
            request = Request(
                request_id=request_id, deadline=float(fields[b"deadline"]),
                version=fields[b"version"].decode(), top_k=int(fields[b"top_k"]),
                shape=shape, pixels=fields[b"pixels"])
            if len(shape) != 3 or len(request.pixels) != shape[0] * shape[1] * shape[2]:
                raise ValueError(f"{len(request.pixels)} bytes of pixels for shape {shape}")
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            return Entry(model, entry_id, None, deliveries, f"malformed entry: {exc!r}",
                         request_id)
        return Entry(model, entry_id, request, deliveries, request_id=request_id)
