"""The model-server worker: ``python -m app.worker``.

Loop (after rq's Worker.work): heartbeat and housekeeping, take the next batch from
Redis, finish the running forward passes, start the next batch's, reply with the
finished ones' answers; finally tear down. The model thus does not wait for Redis: the
next batch is read near the end of a pass (at READ_AT of its expected duration, from the
last passes), and the last one's answers are written while the next pass runs; on a GPU
the device stays busy while Redis I/O happens. The first SIGTERM or SIGINT
finishes the batches in hand, acknowledges them and exits; a second one ends the process
at once (its unacknowledged requests stay pending and another worker, or this one
restarted, claims them).

While a forward pass runs, the main thread keeps heartbeating, and each heartbeat keeps
the claim on the batch in hand fresh, so no other worker takes it however long the pass
takes. If Redis fails meanwhile, the pass goes on: its answers are sent once Redis is
back (or the entries stay pending for another worker), never answered as a failure.
"""

import functools
import logging
import os
import signal
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis

from app import config, metrics, registry
from app.keys import Keys
from app.queue import Queue, connect, error_answer, server_version, version_problem
from app.stop_signals import StopSignals
from app.worker import runtimes
from app.worker.loaded_models import LoadedModels
from app.worker.passes import compute, plan, prediction, summary

log = logging.getLogger("beagle.worker")

BLOCK_MS = 1000  # longest wait on Redis, so stop requests are seen within a second
CONSUMER_IDLE_S = 3600  # consumers of dead workers are forgotten after this
EX_CONFIG = 78  # exit status for "fix the configuration": the unit does not restart it
READ_AT = 0.9  # of a pass's expected duration: then the next batch is read


class Worker:
    def __init__(self, settings, models=None):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = connect(settings.redis_url, socket_timeout=BLOCK_MS / 1000 + 5)
        self.queue = Queue(self.redis, self.keys)
        self.name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.tally = metrics.Tally()  # written with each heartbeat
        load = functools.partial(
            runtimes.load,
            threads=settings.worker_threads,
            gpu_memory_mb=settings.worker_gpu_memory_mb,
        )
        self.models = models or LoadedModels(
            settings.model_repository, settings.models, self.tally, load
        )
        self.stats = Counter()
        self.started = time.time()
        self._stop = StopSignals(then_default=True, announce=self._announce_stop)
        # Forward passes and model loads run here, so the main thread, waiting on them,
        # stays responsive to signals (no Python handler runs while it is inside TF)
        # and keeps heartbeating.
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._next = Counter()  # monotonic time each periodic step is next due
        self._beat_s = min(1.0, settings.heartbeat_ttl / 3, settings.claim_idle / 3)
        self._joined = False  # consumer groups exist for every stream it reads
        self._redis_clock_offset = 0.0
        self._reclaim = False  # entries this consumer held before a restart may wait
        self._holding = []  # entries taken and not yet acknowledged
        self._unsent = None  # (answers, skipped) that Redis was down to receive
        self._pass = None  # the running forward passes: a future of compute()
        self._pass_began = 0.0  # monotonic time the running passes began
        self._pass_s = 0.0  # how long passes take, a moving average

    # -- the loop -----------------------------------------------------------------

    def work(self):
        self.install_signal_handlers()
        try:
            self.startup()
            while not self._stop.is_set() or self._pass:
                try:
                    self.maintain()
                    if self._unsent:
                        self.reply(*self._unsent)
                    batch = self.next_batch()
                    finished = self.finish_pass()
                    if batch is None:  # the pass ended before its read: one round trip
                        finished, batch = [], self.reply(finished, [], then_read=True)
                    answers, skipped = self.start_pass(batch)
                    self.reply(finished + answers, skipped)
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    log.error("worker %s: Redis unreachable (%s); retrying in 1s", self.name, exc)
                    self._stop.wait(1.0)
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning(
                        "worker %s: a stream or group is gone (Redis restarted or "
                        "flushed?); joining again",
                        self.name,
                    )
                    self._joined, self._unsent, self._holding = False, None, []
        finally:
            self.teardown()

    def startup(self):
        if self.settings.worker_cpus:
            os.sched_setaffinity(0, self.settings.worker_cpus)
        log.info(
            "worker %s: on cores %s, %d runtime threads",
            self.name,
            ",".join(map(str, sorted(os.sched_getaffinity(0)))),
            config.per_core(self.settings.worker_threads),
        )
        self._await(self._inference.submit(self.models.refresh), heartbeat=False)
        if not self.models.names():
            log.warning(
                "worker %s: no model to serve in %s (models=%r); waiting for one",
                self.name,
                self.settings.model_repository,
                self.settings.models,
            )
        log.info(
            "worker %s: serving %s, max batch %d, batch timeout %.3fs",
            self.name,
            self._describe_models(),
            self.settings.max_batch_size,
            self.settings.batch_timeout,
        )

    def maintain(self):
        """Periodic steps: join the streams' groups, heartbeat, repository poll."""
        now = time.monotonic()
        if now >= self._next["poll"]:
            self._next["poll"] = now + self.settings.repository_poll
            if self._await(self._inference.submit(self.models.refresh)):
                self._joined = False
                log.info("worker %s: now serving %s", self.name, self._describe_models())
        if not self._joined:
            self._check_redis()
            for stream in self._streams():
                self.queue.ensure_group(stream)
                self.queue.prune_consumers(stream, CONSUMER_IDLE_S)
            self._joined = self._reclaim = True
            self._next["heartbeat"] = 0
        self._heartbeat()

    def next_batch(self):
        """Entries left pending by this worker before a restart or by dead workers first,
        else new ones: up to max_batch_size. While a pass runs, only what is queued now:
        what is queued near its end, or None if it ended first (a short pass: its answers
        and the read then share a round trip); none once a stop was asked."""
        if self._stop.is_set():
            return []
        if self._pass is None:
            batch = self._recover() or self._read(wait=True)
        else:  # recovering now would take back what the running pass holds
            self._await(self._pass, until=self._pass_began + READ_AT * self._pass_s)
            if self._pass.done():
                return None
            batch = self._read(wait=False)
        self._holding += batch
        return batch

    def finish_pass(self):
        """The running passes' answers, once they end: [(entry, answer)]."""
        if self._pass is None:
            return []
        results = self._await(self._pass)
        took = time.monotonic() - self._pass_began
        self._pass_s = (self._pass_s + took) / 2 if self._pass_s else took
        self._pass = None
        return [answer for result in results for answer in self.answers(*result)]

    def start_pass(self, batch):
        """Sort the batch and start its forward passes on the inference thread: the
        answers due at once (malformed, given up, not served) and the entries to drop
        unanswered (expired)."""
        answers, skipped, runnable = self.sort(batch)
        passes = plan(runnable, self.settings.max_batch_size)
        if passes:
            self._pass = self._inference.submit(compute, passes, self.name)
            self._pass_began = time.monotonic()
        return answers, skipped

    def reply(self, answers, skipped, then_read=False):
        """Send the answers, acknowledge and delete their entries and the skipped ones, in
        one pipeline; ``then_read``: with a read of what is queued, whose entries it
        returns."""
        if not answers and not skipped and not then_read:
            return []
        self._unsent = answers, skipped  # kept until Redis has them
        pipe = self.redis.pipeline(transaction=False)
        self.queue.reply(pipe, answers, skipped, self.settings.result_ttl)
        streams = self._streams() if then_read else []
        if streams:
            self.queue.read_new(streams, self.name, self.settings.max_batch_size, None, pipe)
        replies = pipe.execute()
        done = {id(entry) for entry, _ in answers} | {id(entry) for entry in skipped}
        self._unsent, self._holding = None, [e for e in self._holding if id(e) not in done]
        self.stats["answered"] += len(answers)
        batch = self.queue.entries(replies[-1]) if streams else []
        self._holding += batch
        return batch

    def classify(self, batch):
        """The batch's answers and the entries to drop, without the overlap: one turn of
        the loop for one batch."""
        answers, skipped = self.start_pass(batch)
        return answers + self.finish_pass(), skipped

    def teardown(self):
        self._inference.shutdown(wait=False)
        metrics.write(self.tally, self.redis, self.keys)  # what the last heartbeat missed
        try:
            registry.retire(self.redis, self.keys, self.name)
        except redis.RedisError as exc:
            log.warning("worker %s: could not retire from the registry: %s", self.name, exc)
        s = self.stats
        log.info(
            "worker %s: stopped after %.0fs: %d batches, %d requests (mean batch %.1f), "
            "%d answered, %d failed, %d expired, %d poisoned, %d malformed",
            self.name,
            time.time() - self.started,
            s["batches"],
            s["requests"],
            s["requests"] / max(1, s["batches"]),
            s["answered"],
            s["failed"],
            s["expired"],
            s["poisoned"],
            s["malformed"],
        )

    # -- the steps of a pass --------------------------------------------------------

    def sort(self, batch):
        """The batch sorted: answers due now [(entry, answer)] (malformed, given up, not
        served), entries to drop unanswered (expired, malformed without an id), and the
        entries to run [(entry, runner)]."""
        answers, skipped, runnable = [], [], []
        now_ms = self._redis_now() * 1000
        for entry in batch:
            if entry.request is None:
                self._count("malformed", entry)
                log.error(
                    "worker %s: dropping entry %s of %s: %s",
                    self.name,
                    entry.entry_id.decode(),
                    entry.stream,
                    entry.problem,
                )
                if entry.request_id:
                    answers.append((entry, error_answer(400, entry.problem)))
                else:
                    skipped.append(entry)
            elif entry.expired(now_ms):
                self._count("expired", entry)
                skipped.append(entry)
            elif entry.deliveries > self.settings.max_attempts:
                self._count("poisoned", entry)
                log.error(
                    "worker %s: request %s was delivered %d times; answering with an error",
                    self.name,
                    entry.request_id,
                    entry.deliveries,
                )
                answers.append(
                    (
                        entry,
                        error_answer(
                            500,
                            f"inference failed {entry.deliveries - 1} times on this input; "
                            "giving up",
                        ),
                    )
                )
            elif (runner := self.models.get(entry.model, entry.version)) is None:
                answers.append(
                    (
                        entry,
                        error_answer(
                            404, f"model {entry.model} version {entry.version} is not served"
                        ),
                    )
                )
            else:
                runnable.append((entry, runner))
        return answers, skipped, runnable

    def answers(self, runner, entries, outcome, took):
        """[(entry, answer)] for one pass of compute(): its predictions, or the error."""
        spec = runner.spec
        if isinstance(outcome, Exception):
            self.stats["failed"] += 1
            self.tally.count("failed", model=spec.name)
            log.error(
                "worker %s: inference failed for request %s: %s",
                self.name,
                entries[0].request_id,
                summary(outcome),
            )
            return [(entries[0], error_answer(500, f"inference failed: {summary(outcome)}"))]
        self._observe(spec, entries, took)
        return [
            (e, prediction(spec, row, e.request.top_k))
            for e, row in zip(entries, outcome, strict=True)
        ]

    # -- signals --------------------------------------------------------------------

    def install_signal_handlers(self):
        """The first SIGTERM or SIGINT is recorded (the loop stops after the batch in hand);
        a second gets the kernel's default action: the process ends at once, mid-batch,
        whatever Python is doing, and its requests stay pending for another worker."""
        self._stop.install()

    def _announce_stop(self, signum):
        log.info(
            "worker %s: %s, finishing the batch in hand (send again to stop now)",
            self.name,
            signal.Signals(signum).name,
        )

    # -- helpers --------------------------------------------------------------------

    def _streams(self):
        """The streams of the models and versions it holds."""
        return [
            self.keys.stream(name, version)
            for name, versions in self.models.versions().items()
            for version in (None, *versions)
        ]

    def _heartbeat(self):
        now = time.monotonic()
        if now < self._next["heartbeat"]:
            return
        self._next["heartbeat"] = now + self._beat_s
        pipe = self.redis.pipeline(transaction=False)
        registry.announce(
            pipe,
            self.keys,
            self.name,
            self.models.announcement(),
            self._status(),
            self.settings.heartbeat_ttl,
        )
        self.queue.hold(pipe, self.name, self._holding)
        self.tally.flush(pipe, self.keys)
        pipe.time()
        sent = time.time()
        seconds, micros = pipe.execute()[-1]
        # Entry ids carry Redis's clock: deadlines and queue waits are measured on it.
        self._redis_clock_offset = seconds + micros / 1e6 - (sent + time.time()) / 2

    def _redis_now(self):
        return time.time() + self._redis_clock_offset

    def _check_redis(self):
        """Stop for good, not in a restart loop, on a Redis too old for Beagle's commands."""
        problem = version_problem(server_version(self.settings.redis_url))
        if problem:
            log.error(
                "worker %s: %s; stopping with exit status %d, which systemd does not restart",
                self.name,
                problem,
                EX_CONFIG,
            )
            raise SystemExit(EX_CONFIG)

    def _await(self, future, heartbeat=True, until=None):
        """The future's result (None if ``until``, a monotonic time, comes first);
        meanwhile the main thread keeps heartbeating, so a long forward pass or model load
        never looks like a dead worker nor loses its claim."""
        while True:
            left = self._beat_s if until is None else min(self._beat_s, until - time.monotonic())
            if left <= 0:
                return None
            try:
                return future.result(timeout=left)
            except FutureTimeout:
                if not heartbeat:
                    continue
                try:
                    self._heartbeat()
                except redis.RedisError as exc:  # the pass goes on; its answers wait
                    log.warning(
                        "worker %s: heartbeat failed (%s: %s) during a forward pass",
                        self.name,
                        type(exc).__name__,
                        exc,
                    )

    def _read(self, wait):
        """New entries: when ``wait``, up to BLOCK_MS for the first and batch_timeout for
        more; else only what is queued."""
        streams, size = self._streams(), self.settings.max_batch_size
        if not streams:
            if wait:
                self._stop.wait(BLOCK_MS / 1000)
            return []
        batch = self.queue.read_new(streams, self.name, size, BLOCK_MS if wait else None)
        window_ends = time.monotonic() + self.settings.batch_timeout
        while wait and batch and len(batch) < size and (left := window_ends - time.monotonic()) > 0:
            more = self.queue.read_new(
                streams, self.name, size - len(batch), max(1, int(left * 1000))
            )
            if not more:
                break
            batch += more
        return batch

    def _recover(self):
        size, streams = self.settings.max_batch_size, self._streams()
        if self._reclaim:
            own = [e for stream in streams for e in self.queue.reclaim_own(stream, self.name, size)]
            self._reclaim = bool(own)  # again until none is left
            if own:
                log.warning(
                    "worker %s: took back %d requests it held before a restart", self.name, len(own)
                )
                return own
        now = time.monotonic()
        if now < self._next["claim"]:
            return []
        self._next["claim"] = now + self.settings.claim_idle / 2
        claimed = [
            e
            for stream in streams
            for e in self.queue.claim_stale(stream, self.name, self.settings.claim_idle, size)
        ]
        if claimed:
            log.warning(
                "worker %s: claimed %d requests left pending by another worker",
                self.name,
                len(claimed),
            )
            self._next["claim"] = now  # there may be more
        return claimed

    def _count(self, outcome, entry):
        self.stats[outcome] += 1
        self.tally.count(outcome, model=entry.model)

    def _observe(self, spec, entries, took):
        self.stats["batches"] += 1
        self.stats["requests"] += len(entries)
        self.tally.observe("batch_size", len(entries), model=spec.name)
        self.tally.observe("inference_seconds", took, model=spec.name)
        redis_now = self._redis_now()
        for entry in entries:
            self.tally.observe(
                "queue_wait_seconds",
                max(0.0, redis_now - took - entry.queued_ms / 1000),
                model=spec.name,
            )
        log.debug(
            "worker %s: batch of %d for %s v%d in %.1f ms: %s",
            self.name,
            len(entries),
            spec.name,
            spec.version,
            took * 1000,
            " ".join(e.request_id for e in entries),
        )

    def _status(self):
        return {
            "id": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "models": self.models.versions(),
            "batches": self.stats["batches"],
            "requests": self.stats["requests"],
        }

    def _describe_models(self):
        return (
            ", ".join(
                f"{name} v{','.join(map(str, versions))}"
                for name, versions in self.models.versions().items()
            )
            or "nothing"
        )


def main():
    settings = config.load()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    Worker(settings).work()
