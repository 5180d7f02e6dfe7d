"""The web side of a prediction, for every HTTP API: resolve the model version, decode
images within the process's budget, submit them to the queue all at once and wait for
every answer by the request's deadline (the workers run the models). Views hold an
in-flight slot (`in_flight_slot`) from before they decode until the answers are in.
Failures leave through ``abort(status, why)``, which each API renders in its own error
shape; a request refused before it is queued raises `Shed`, which the app's error handler
counts and answers with 503."""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import redis
from flask import abort, g
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.imaging import BadImage, Busy, to_queued
from app.queue import Request, Shed
from app.redis_connection import master_address, master_changed
from app.registry import ModelInfo
from app.web.resources import beagle, current_settings

log = logging.getLogger("beagle.web")

# The tensors every protocol names: a model's input pixels and its output.
PIXELS = "pixels"
PROBABILITIES = "probabilities"
# A Redis connection that broke: with Sentinel, a failover; ask again, then carry on.
REDIS_DROPPED = (redis.ConnectionError, redis.TimeoutError)
FAILOVER_BACKOFF_S = 0.5  # longest pause between attempts while the Sentinels fail over
WATCH_S = 1.0  # how often a wait looks whether its process has since heard of a new master
SLOT_WAIT_S = 0.1  # longest wait for an in-flight slot to free before a request is refused
AT_SLOT_LIMIT = "this web process is at its limit of requests in flight"  # why `busy`
AT_TURN_LIMIT = "this web process has more requests waiting to start than it can start in time"


class MasterMoved(Exception):
    """The Sentinels named another master while a request waited on an answer."""


@dataclass(frozen=True)
class Target:
    """What a request runs on: the model as the registry serves it, the version asked for
    (None: the newest a worker holds) and the input shape its pixels are sized to."""

    model: str
    info: ModelInfo
    version: int | None
    shape: tuple[int, int, int]


def resolve(model: str, version: int | None) -> Target:
    """The target of a request for ``model`` (and ``version``): 404 if not served, 503
    (Shed) if no live worker serves it."""
    info = served(model, version)
    g.metric_model = model  # a served model: safe as a metric label (any name is not)
    if not info.live_workers:
        raise Shed("no_worker", f"no live worker serves model {model!r}")
    return Target(model, info, version, info.shape(info.latest if version is None else version))


def served(model: str, version: int | None) -> ModelInfo:
    """The registry's view of ``model``, which serves ``version`` if one is given; 404 if
    not (a model with no live worker is still served: its requests get 503)."""
    info = _lookup(model)
    if info is None:
        abort(404, f"model {model!r} is not served")
    if version is not None and version not in info.versions:
        abort(
            404,
            f"model {model!r} has no version {version} "
            f"(served: {', '.join(map(str, sorted(info.versions)))})",
        )
    return info


def instances_limit(count: int) -> None:
    """400 for a request of more than a quarter of max_queue images: no client fills a
    model's queue alone."""
    limit = max(1, current_settings().max_queue // 4)
    if count > limit:
        abort(400, f"{count} images in one request; the limit is {limit} (a quarter of max_queue)")


def _lookup(model: str) -> ModelInfo | None:
    """The registry's view of ``model``; with Sentinel, while the master fails over (Redis
    unreachable), as last read within heartbeat_ttl: the request then waits for the new
    master instead of failing."""
    directory = beagle().directory
    try:
        return directory.lookup(model)
    except REDIS_DROPPED:
        recent = directory.last_known(current_settings().heartbeat_ttl)
        if not current_settings().redis_sentinels or recent is None:
            raise
        return next((info for info in recent if info.name == model), None)


def pixels_of(data: bytes, shape: tuple[int, int, int], where: str = "") -> bytes:
    """Model-sized pixels (or a `Jpeg` of them) from encoded image bytes; 4xx for anything
    that is not one, 503 while the process's decode budget stays full. ``where`` prefixes
    errors."""
    try:
        return to_queued(data, shape, current_settings().max_image_pixels, beagle().decode_budget)
    except BadImage as exc:
        abort(exc.status, where + exc.message)
    except Busy as exc:
        raise Shed("decoding", str(exc)) from None


def submit_and_wait(target: Target, images: list[bytes], top_k: int) -> list[dict]:
    """Submit each image's pixels, all or none, and wait: the workers' answers, in order.
    ``top_k`` 0 asks for the whole probability vector."""
    timeout = current_settings().request_timeout
    deadline = g.started + timeout
    left = deadline - time.time()
    if left <= 0:  # spent decoding: queueing it now would only make a worker skip it
        abort(504, f"no answer within the {timeout:g}s deadline")
    requests = [
        Request(
            request_id=f"{g.request_id}.{n}" if len(images) > 1 else g.request_id,
            timeout_ms=int(left * 1000),
            top_k=top_k,
            shape=target.shape,
            pixels=pixels,
            trace=str(g.trace),
        )
        for n, pixels in enumerate(images)
    ]
    # Refusing on queue wait is for overload. While no worker is taking requests (one is
    # restarting), the queue is stalled, not overloaded: its head may be past every
    # deadline, yet requests wait for the worker until theirs, and max_queue alone bounds
    # the backlog.
    max_wait = (
        min(current_settings().max_queue_wait, timeout / 2) if target.info.active_workers else None
    )
    queue, settings = beagle().queue, current_settings()
    answers: dict[str, dict] = {}

    def remaining() -> float:
        return deadline - time.time()

    def submit(wait: bool = False) -> None:
        """Queue the requests still unanswered, with the time left; with ``wait``, start
        waiting for their answers in the same round trip."""
        left = remaining()
        left_ms = int(left * 1000)
        pending = [replace(r, timeout_ms=left_ms) for r in requests if r.request_id not in answers]
        if pending and left_ms > 0:
            wait_s = left if wait else 0.0
            answers.update(
                queue.submit(
                    target.model, target.version, pending, settings.max_queue, max_wait, wait_s
                )
            )

    def wait() -> None:
        queue.wait_results([r.request_id for r in requests], remaining, answers)

    def wait_watching(master: tuple[str, int] | None) -> None:
        """Wait in slices; between them, raise MasterMoved if this process has since found
        another master: the old one may have taken the requests in its last moment, after
        its replicas' last copy, and the wait may be on a connection to the new one."""
        while len(answers) < len(requests) and remaining() > 0:
            ends = time.time() + WATCH_S
            queue.wait_results(
                [r.request_id for r in requests],
                lambda ends=ends: min(remaining(), ends - time.time()),
                answers,
            )
            now = master_address(queue.redis)
            if master is not None and now != master:
                raise MasterMoved(f"the Sentinels now name {now}")
            master = now  # None before this process's first connection

    with beagle().turn.aside(remaining):  # the turn goes to another request meanwhile
        if not settings.redis_sentinels:
            submit(wait=True)  # one Redis: down is a 503 now (redis_error)
            wait()  # the answers the first pop did not bring
        else:
            master = master_address(queue.redis)
            failed_over(submit)
            while True:
                try:
                    wait_watching(master)
                    break
                except (redis.RedisError, MasterMoved) as exc:
                    if isinstance(exc, redis.RedisError) and not master_changed(exc):
                        raise
                    master = master_address(queue.redis)
                    # The wait broke (the master went away). Replication is asynchronous, so
                    # the new master may lack what was queued: queue it again, same ids. A
                    # duplicate answer lands in the same list and is never read twice.
                    log.warning(
                        "request %s: Redis dropped its wait (%s: %s); queueing it again "
                        "on the master the Sentinels name",
                        g.request_id,
                        type(exc).__name__,
                        exc,
                    )
                    beagle().tally.count("requeued", model=target.model)
                    failed_over(submit)
    if len(answers) < len(requests):
        abort(504, f"no answer within the {timeout:g}s deadline")
    for answer in (answers[r.request_id] for r in requests):
        if not answer["ok"]:
            abort(answer["status"], answer["error"])
    return [answers[r.request_id] for r in requests]


def failed_over(step: Callable[[], None]) -> None:
    """Run ``step`` against the master the Sentinels name, again after a dropped
    connection, backing off while they fail over, until the request's deadline (then the
    last error: a 503)."""
    deadline = g.started + current_settings().request_timeout

    def give_up_at_deadline(error: Exception) -> None:
        if time.time() >= deadline:
            raise error

    retry = Retry(
        ExponentialBackoff(cap=FAILOVER_BACKOFF_S, base=0.05),
        retries=10_000,
        supported_errors=REDIS_DROPPED,
    )
    retry.call_with_retry(step, give_up_at_deadline)


@contextmanager
def in_flight_slot() -> Iterator[None]:
    """Hold one of this process's in-flight slots. They are fewer than its threads, so a
    thread is always free to refuse the next request quickly instead of leaving it
    queued inside Apache. A request waits up to SLOT_WAIT_S for one: Apache's requests
    spread unevenly over the daemon processes, and one may be full while another has
    room; in one that serves, a slot frees within that."""
    slots = beagle().slots
    if not slots.acquire(blocking=False):
        with beagle().turn.aside(lambda: SLOT_WAIT_S):
            if not slots.acquire(timeout=SLOT_WAIT_S):
                raise Shed("busy", AT_SLOT_LIMIT)
    try:
        yield
    finally:
        slots.release()


def take_turn() -> None:
    """Before a prediction request's view: wait in line for this process's turn
    (app/turns.py), as long as admission lets a request wait in a model's queue
    (max_queue_wait, at most half the request's timeout); past it, refused (`turn`)."""
    settings = current_settings()
    if not beagle().turn.take(min(settings.max_queue_wait, settings.request_timeout / 2)):
        raise Shed("turn", AT_TURN_LIMIT)


def give_turn_back(_error: BaseException | None = None) -> None:
    """After every request (teardown): hand the process's turn on if the request holds it."""
    beagle().turn.done()
