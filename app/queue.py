"""The Redis queue between the web tier and the workers: the one home of its format.

A request names a model and maybe a version; it goes to that model's stream for
requests that name no version (every worker serving the model reads it and answers with
the newest version it holds), or to the stream of its version (read only by workers
holding that version): app/keys.py names them. An entry carries the request id, its time
budget in ms counted from the entry's id (Redis's clock when it was added, so neither the
web host's clock nor the worker's matters), top_k (0 = the whole probability vector) and
uint8 pixels of shape h,w,c, or (encoding "jpeg") a JPEG that decodes to that shape
(app/imaging.py's `Jpeg`). An entry without an encoding holds pixels, as entries queued
before there were two did. An answer is JSON: {"ok": true, "model", "version",
"predictions" | "probabilities"} or `error_answer`'s {"ok": false, "status", "error"}.

Web:       `submit` adds a request's entries, one per image, in one MULTI, all
           or none: none when the stream would hold more than max_queue entries or the
           oldest entry no worker has taken has waited max_wait; `wait_results` blocks
           on the answers' lists. `submit` may start that wait in its own round trip:
           a refusal then also goes to the request's refusal list, which ends the wait.
Worker:    `read_new`, `reclaim_own` (what it held before a restart), `claim_stale` (what
           dead workers held), `hold` (keeps its claim on a long batch fresh), `reply`.
Operators: `backlog`, `oldest_waiting`, `flush`.
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

import redis
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from app.imaging import Jpeg
from app.keys import GROUP, Keys
from app.queue_scripts import ADMIT_SCRIPT, WAITED_SCRIPT
from app.redis_connection import exec_then_pop

MIN_WAIT_S = 0.001  # a shorter BLPOP timeout Redis rounds down to 0, which means "forever"


def _answer(popped: Any, results: dict[str, str]) -> dict[str, Any]:
    """{request id: answer} from a BLPOP's reply on answer lists (``results``: {list:
    request id}); {} if nothing came or the list popped is not one of them."""
    key = popped[0].decode() if popped else None
    return {results[key]: json.loads(popped[1])} if key in results else {}


class Shed(Exception):
    """A request refused before it was queued: the web answers 503 with Retry-After and
    counts ``reason`` (full, slow, busy, turn, decoding, no_worker: beagle_shed_total's label);
    ``why`` is what the client reads."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason
        self.why = why


def error_answer(status: int, message: str) -> dict[str, Any]:
    return {"ok": False, "status": status, "error": message}


@dataclass(frozen=True)
class Request:
    """One image to classify, as the web tier queues it."""

    request_id: str
    timeout_ms: int  # its time left at admission
    top_k: int
    shape: tuple
    pixels: bytes  # h*w*c uint8 pixels at ``shape``, or a `Jpeg` that decodes to it
    trace: str = ""  # its span's traceparent (app/trace_context.py)

    def fields(self) -> dict[FieldT, EncodableT]:
        return {
            "id": self.request_id,
            "timeout_ms": self.timeout_ms,
            "top_k": self.top_k,
            "shape": ",".join(map(str, self.shape)),
            "encoding": "jpeg" if isinstance(self.pixels, Jpeg) else "raw",
            "pixels": self.pixels,
            "trace": self.trace,
        }


@dataclass
class Entry:
    """A request as a worker sees it: where it came from and how often it was delivered.

    ``request`` is None when the entry could not be decoded; ``problem`` then says why
    and ``request_id`` is whatever id could be read ("" if none)."""

    stream: str
    model: str
    version: int | None  # None: the newest the worker holds
    entry_id: bytes
    request: Request | None
    deliveries: int = 1
    problem: str = ""
    request_id: str = ""

    @property
    def queued_ms(self) -> int:
        """When it was queued, in ms on Redis's clock."""
        return int(self.entry_id.split(b"-")[0])

    def expired(self, now_ms: float) -> bool:
        """Whether its deadline passed (only asked of a decoded entry)."""
        if self.request is None:
            raise ValueError("a malformed entry has no deadline")
        return self.queued_ms + self.request.timeout_ms < now_ms


Answer = tuple[Entry, dict]  # an entry and the answer for its request


class Outgoing(NamedTuple):
    """What a worker sends back: answers, and entries to drop unanswered (expired)."""

    answers: list[Answer]
    skipped: list[Entry]


class Queue:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._waited = client.register_script(WAITED_SCRIPT)

    # -- web side ------------------------------------------------------------------

    def submit(
        self,
        model: str,
        version: int | None,
        requests: list[Request],
        max_queue: int,
        max_wait_s: float | None,
        wait_s: float = 0.0,
    ) -> dict[str, Any]:
        """Queue ``requests``, all or none; refused, none is queued and `Shed` says why:
        "full" (max_queue entries) or "slow" (the oldest waiting waited max_wait_s; None:
        no limit). With ``wait_s``, the wait for the first answer (`wait_results`'s first
        pop, up to that long) goes in the same round trip; returns what came, {id: answer}."""
        stream = self.keys.stream(model, version)
        refusal = self.keys.refused(requests[0].request_id)
        results = {self.keys.result(r.request_id): r.request_id for r in requests}
        pop_keys = [*results, refusal] if wait_s >= MIN_WAIT_S else []
        admit_keys = [stream, refusal] if pop_keys else [stream]
        max_wait_ms = -1 if max_wait_s is None else int(max_wait_s * 1000)
        # EVAL, not EVALSHA: a script missing after a Redis restart would fail inside EXEC,
        # after the XADDs; Redis finds the compiled script by the body's hash anyway.
        script = (ADMIT_SCRIPT, len(admit_keys), *admit_keys, max_queue, max_wait_ms, GROUP)
        admit = [
            *(("XADD", stream, "*", *chain(*r.fields().items())) for r in requests),
            ("EVAL", *script, len(requests)),
        ]
        executed, popped = exec_then_pop(self.redis, admit, pop_keys, wait_s)
        verdict, detail = executed[-1]  # the script's
        if verdict == b"full":
            raise Shed("full", f"model {model!r} has {detail} requests waiting")
        if verdict == b"slow":
            raise Shed(
                "slow", f"model {model!r}'s oldest waiting request has waited {detail / 1000:.1f}s"
            )
        return _answer(popped, results)  # a stray refusal is not an answer: ignored

    def wait_results(
        self,
        request_ids: list[str],
        remaining: Callable[[], float],
        answers: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The answers for ``request_ids``, in their order, as many as arrived while
        ``remaining()`` (seconds left) stayed positive. ``answers`` ({request id: answer})
        holds those that came already, and gets those that come, even if the wait breaks."""
        keys = {self.keys.result(request_id): request_id for request_id in request_ids}
        answers = {} if answers is None else answers
        while len(answers) < len(keys) and (left := remaining()) >= MIN_WAIT_S:
            waiting = [key for key, request_id in keys.items() if request_id not in answers]
            came = _answer(self.redis.blpop(waiting, timeout=left), keys)
            if not came:
                break
            answers.update(came)
        return [answers[request_id] for request_id in request_ids if request_id in answers]

    # -- operators and metrics --------------------------------------------------------

    def streams_of(self, model: str, versions: Iterable[int] = ()) -> list[str]:
        """``model``'s streams: for requests naming no version, and for each of ``versions``
        (those the registry knows: no key is listed, as the web's Redis user may not)."""
        return [self.keys.stream(model)] + [self.keys.stream(model, v) for v in sorted(versions)]

    def all_streams(self) -> list[str]:
        """Every stream that exists, found by SCAN (operators' tools; the web's and the
        workers' Redis users may not list keys)."""
        found = self.redis.scan_iter(match=self.keys.pattern("stream"), count=500)
        return sorted(k.decode() for k in found)

    def backlog(self, model: str, versions: Iterable[int] = ()) -> int:
        """Requests of ``model`` (and ``versions``) waiting or being worked on."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams_of(model, versions):
            pipe.xlen(stream)
        return sum(pipe.execute())

    def oldest_waiting(self, model: str, versions: Iterable[int] = ()) -> float:
        """Seconds the oldest of ``model``'s requests no worker has taken has waited."""
        streams = self.streams_of(model, versions)
        return max(self._waited(keys=[stream], args=[GROUP]) for stream in streams) / 1000

    def flush(
        self, answer: dict[str, Any], result_ttl: float, dry_run: bool = False
    ) -> dict[str, int]:
        """Answer every queued request with ``answer`` and remove it; {stream: count}."""
        removed = {}
        for stream in self.all_streams():
            count = 0
            while not dry_run and (entries := self.redis.xrange(stream, count=500)):
                pipe = self.redis.pipeline(transaction=False)
                # redis-py types replies as bytes | str; this client gets bytes
                answers = [(self._entry(stream, i, fields), answer) for i, fields in entries]  # type: ignore[arg-type]
                self.reply(pipe, Outgoing(answers, []), result_ttl)
                pipe.execute()
                count += len(entries)
            removed[stream] = self.redis.xlen(stream) if dry_run else count
        return removed

    # -- worker side ----------------------------------------------------------------

    def ensure_group(self, stream: str) -> None:
        """Create the consumer group (and stream); entries queued before it are kept."""
        try:
            self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def prune_consumers(self, stream: str, idle_s: float) -> None:
        """Forget consumers (dead workers) with nothing pending and idle for ``idle_s``."""
        for consumer in self.redis.xinfo_consumers(stream, GROUP):
            if consumer["pending"] == 0 and consumer["idle"] > idle_s * 1000:
                self.redis.xgroup_delconsumer(stream, GROUP, consumer["name"])

    def read_new(
        self, streams: list[str], consumer: str, count: int, block_ms: int | None
    ) -> list[Entry]:
        """Up to ``count`` new entries across ``streams``, waiting at most ``block_ms``
        (None: not at all)."""
        return self.entries(self.add_read(self.redis, streams, consumer, count, block_ms))

    @staticmethod
    def add_read(
        pipe: redis.Redis,
        streams: list[str],
        consumer: str,
        count: int,
        block_ms: int | None = None,
    ) -> Any:
        """Add to ``pipe`` a read of up to ``count`` new entries across ``streams``;
        `entries` turns its reply into entries."""
        return pipe.xreadgroup(
            GROUP, consumer, {s: ">" for s in streams}, count=count, block=block_ms
        )

    def entries(self, replies: Any) -> list[Entry]:
        """Entries from an XREADGROUP reply."""
        return [
            self._entry(stream.decode(), entry_id, fields)
            for stream, messages in replies or ()
            for entry_id, fields in messages
            if fields
        ]

    def reclaim_own(self, stream: str, consumer: str, count: int) -> list[Entry]:
        """Entries this consumer took before a restart and never acknowledged."""
        pending: Any = self.redis.xpending_range(
            stream, GROUP, "-", "+", count, consumername=consumer
        )
        if not pending:
            return []
        counts = {item["message_id"]: item["times_delivered"] + 1 for item in pending}
        claimed: Any = self.redis.xclaim(stream, GROUP, consumer, 0, list(counts))
        return [
            self._entry(stream, entry_id, fields, counts[entry_id])
            for entry_id, fields in claimed
            if fields
        ]

    def claim_stale(self, stream: str, consumer: str, min_idle_s: float, count: int) -> list[Entry]:
        """Entries idle longer than ``min_idle_s`` in any consumer, now ours, with counts."""
        claimed = self.redis.xautoclaim(
            stream, GROUP, consumer, int(min_idle_s * 1000), start_id="0-0", count=count
        )
        messages = [(entry_id, fields) for entry_id, fields in claimed[1] if fields]
        if not messages:
            return []
        pending: Any = self.redis.xpending_range(
            stream,
            GROUP,
            min=messages[0][0],
            max=messages[-1][0],
            count=len(messages) * 4,
            consumername=consumer,
        )
        counts = {item["message_id"]: item["times_delivered"] for item in pending}
        return [
            self._entry(stream, entry_id, fields, counts.get(entry_id, 2))
            for entry_id, fields in messages
        ]

    def hold(self, pipe: Pipeline, consumer: str, entries: list[Entry]) -> None:
        """Add to ``pipe``: reset the idle time of ``entries``, which ``consumer`` is still
        working on, so no other worker claims them; their delivery counts stay."""
        for stream, ids in self._by_stream(entries).items():
            # redis-py types message_ids as an invariant list of StreamIdT; list[bytes] is valid
            pipe.xclaim(stream, GROUP, consumer, 0, ids, justid=True)  # type: ignore[arg-type]

    def reply(self, pipe: Pipeline, outgoing: Outgoing, result_ttl: float) -> None:
        """Add to ``pipe``: push each answer; acknowledge and delete the answered entries
        and the skipped ones."""
        answers, skipped = outgoing
        for entry, answer in answers:
            if entry.request_id:
                key = self.keys.result(entry.request_id)
                pipe.lpush(key, json.dumps(answer))
                pipe.expire(key, max(1, int(result_ttl)))
        for stream, ids in self._by_stream([e for e, _ in answers] + list(skipped)).items():
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)

    @staticmethod
    def _by_stream(entries: Iterable[Entry]) -> dict[str, list[bytes]]:
        grouped: dict[str, list[bytes]] = {}
        for entry in entries:
            grouped.setdefault(entry.stream, []).append(entry.entry_id)
        return grouped

    def _entry(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int = 1
    ) -> Entry:
        model, version = self.keys.stream_of(stream)
        request_id = fields.get(b"id", b"").decode("utf-8", "replace")
        try:
            shape = tuple(int(n) for n in fields[b"shape"].split(b","))
            pixels, encoding = fields[b"pixels"], fields.get(b"encoding", b"raw")
            if encoding == b"jpeg":
                pixels = Jpeg(pixels)
            elif encoding != b"raw":
                raise ValueError(f"unknown encoding {encoding!r}")
            request = Request(
                request_id=request_id,
                timeout_ms=int(fields[b"timeout_ms"]),
                top_k=int(fields[b"top_k"]),
                shape=shape,
                pixels=pixels,
                trace=fields.get(b"trace", b"").decode("ascii", "replace"),
            )
            if len(shape) != 3:
                raise ValueError(f"shape {shape} is not height,width,channels")
            if encoding == b"raw" and len(pixels) != shape[0] * shape[1] * shape[2]:
                raise ValueError(f"{len(pixels)} bytes of pixels for shape {shape}")
        except (KeyError, ValueError) as exc:
            return Entry(
                stream,
                model,
                version,
                entry_id,
                None,
                deliveries,
                f"malformed entry: {exc!r}"[:300],
                request_id,
            )
        return Entry(stream, model, version, entry_id, request, deliveries, request_id=request_id)
