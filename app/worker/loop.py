"""The model-server worker's loop, which ``python -m app.worker`` runs.

Loop (after rq's Worker.work): each `step` does housekeeping, takes the next batch from
Redis, finishes the running forward passes, starts the next batch's and replies with the
finished ones' answers; finally tear down. The model thus does not wait for Redis: the
next batch is read near the end of a pass (at READ_AT of its expected duration, from the
last passes), and the last one's answers are written while the next pass runs; on a GPU
the device stays busy while Redis I/O happens. With nothing queued, the round trip that
writes the answers also waits for the next request, as an idle worker's read does. The
first SIGTERM or SIGINT finishes the batches in hand, acknowledges them and exits; a second
one ends the process at once (its unacknowledged requests stay pending and another worker,
or this one restarted, claims them).

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
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import redis

from app import config, metrics, registry
from app.config import Settings
from app.keys import Keys
from app.queue import (
    Answer,
    Entry,
    Outgoing,
    Queue,
)
from app.redis_connection import client as redis_client
from app.redis_connection import master_changed, server_version, version_problem
from app.stop_signals import StopSignals
from app.worker import runtimes
from app.worker.heartbeat import Heartbeat
from app.worker.intake import BLOCK_MS, Intake
from app.worker.loaded_models import LoadedModels
from app.worker.outcomes import Outcomes
from app.worker.passes import PassResult, compute, decode_images, plan

log = logging.getLogger("beagle.worker")

CONSUMER_IDLE_S = 3600  # consumers of dead workers are forgotten after this
EX_CONFIG = 78  # exit status for "fix the configuration": the unit does not restart it
READ_AT = 0.9  # of a pass's expected duration: then the next batch is read

T = TypeVar("T")


class Worker:
    def __init__(self, settings: Settings, models: LoadedModels | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = redis_client(settings, socket_timeout=BLOCK_MS / 1000 + 5)
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
        self.outcomes = Outcomes(self.name, settings.max_attempts, self.models, self.tally)
        self.started = time.time()
        self._stop = StopSignals(then_default=True, announce=self._announce_stop)
        self.intake = Intake(self.queue, settings, self.name, self._stop)
        # Forward passes and model loads run here, so the main thread, waiting on them,
        # stays responsive to signals (no Python handler runs while it is inside TF)
        # and keeps heartbeating.
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._poll_at = 0.0  # monotonic time the next repository poll is due
        self.heartbeat = Heartbeat(self.queue, self.name, self.tally, settings)
        self._joined = False  # consumer groups exist for every stream it reads
        self._holding: list[Entry] = []  # entries taken and not yet acknowledged
        self._unsent: Outgoing | None = None  # an Outgoing that Redis was down to receive
        # the running forward passes: a future of compute()
        self._pass: Future[list[PassResult]] | None = None
        self._pass_began = 0.0  # monotonic time the running passes began
        self._pass_s = 0.0  # how long passes take, a moving average
        self.abandoned = False  # a stop came during a model load, which still runs

    # -- the loop -----------------------------------------------------------------

    def work(self) -> None:
        self.install_signal_handlers()
        try:
            self.startup()
            while not self._stop.is_set() or self._pass:
                try:
                    self.step()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    log.error("worker %s: Redis unreachable (%s); retrying in 1s", self.name, exc)
                    self._stop.wait(1.0)
                except redis.ResponseError as exc:
                    if master_changed(exc):
                        log.warning(
                            "worker %s: Redis ended its read (%s); reading from the master "
                            "the Sentinels name",
                            self.name,
                            exc,
                        )
                        continue
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

    def step(self) -> None:
        """One turn: housekeeping; the next batch and the running pass's answers (with no
        next batch in hand, the answers' round trip reads it, waiting for it); the next
        pass started; the answers sent while it runs."""
        self.maintain()
        if self._unsent:
            self.reply(self._unsent)
        if self._pass is None:
            batch, finished = self.take_batch(), []
        elif self._stop.is_set():
            batch, finished = [], self.finish_pass()
        elif self.runs_past_read_time():
            batch, finished = self.read_queued(), self.finish_pass()
        else:  # it ended first
            batch, finished = [], self.finish_pass()
        if finished and not batch and not self._stop.is_set():
            batch, finished = self.reply_and_read(finished), []  # in one round trip
        due = self.start_pass(batch)
        self.reply(Outgoing(finished + due.answers, due.skipped))

    def startup(self) -> None:
        if self.settings.worker_cpus:
            os.sched_setaffinity(0, self.settings.worker_cpus)
        log.info(
            "worker %s: on cores %s, %d runtime threads",
            self.name,
            ",".join(map(str, sorted(os.sched_getaffinity(0)))),
            config.per_core(self.settings.worker_threads),
        )
        self._load_models(heartbeat=False)
        if self._stop.is_set():
            return
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

    def maintain(self) -> None:
        """Periodic steps: join the streams' groups, heartbeat, repository poll."""
        now = time.monotonic()
        if now >= self._poll_at:
            self._poll_at = now + self.settings.repository_poll
            if self._load_models():
                self._joined = False
                log.info("worker %s: now serving %s", self.name, self._describe_models())
        if not self._joined:
            self._check_redis()
            for stream in self._streams():
                self.queue.ensure_group(stream)
                self.queue.prune_consumers(stream, CONSUMER_IDLE_S)
            self._joined = self.intake.reclaim = True
            self.heartbeat.next_at = 0.0
        self._heartbeat()

    def take_batch(self) -> list[Entry]:
        """With no pass running: entries left pending by this worker before a restart or by
        dead workers first, else new ones, waiting for them; up to max_batch_size. None once
        a stop was asked."""
        if self._stop.is_set():
            return []
        streams = self._streams()
        return self._hold(self.intake.recover(streams) or self.intake.read(streams, wait=True))

    def runs_past_read_time(self) -> bool:
        """Wait until the running pass is near its expected end (READ_AT of it); True if
        it still runs then."""
        running = self._running()
        self._wait(running, self._pass_began + READ_AT * self._pass_s)
        return not running.done()

    def read_queued(self) -> list[Entry]:
        """What is queued now, without waiting (recovering now would take back what the
        running pass holds)."""
        return self._hold(self.intake.read(self._streams(), wait=False))

    def finish_pass(self) -> list[Answer]:
        """The running pass's answers, once it ends."""
        results = self._await(self._running())
        took = time.monotonic() - self._pass_began
        self._pass_s = (self._pass_s + took) / 2 if self._pass_s else took
        self._pass = None
        now = self.heartbeat.redis_now()
        return [answer for result in results for answer in self.outcomes.answers(result, now)]

    def start_pass(self, batch: list[Entry]) -> Outgoing:
        """Sort the batch and start its forward passes on the inference thread; what is
        due at once: answers (malformed, given up, not served) and entries to drop
        unanswered (expired)."""
        due, runnable = self.outcomes.sort(batch, self.heartbeat.redis_now() * 1000)
        passes = plan(runnable, self.settings.max_batch_size)
        if passes:
            self._pass = self._inference.submit(compute, passes, self.name)
            self._pass_began = time.monotonic()
        return due

    def reply(self, outgoing: Outgoing) -> None:
        """Send the answers, acknowledge and delete their entries and the skipped ones, in
        one pipeline."""
        if outgoing.answers or outgoing.skipped:
            self._send(outgoing, read=False)

    def reply_and_read(self, answers: list[Answer]) -> list[Entry]:
        """`reply` with these answers and, in the same round trip, read what is queued,
        waiting up to BLOCK_MS for the first if nothing is: the entries read. It does not
        wait when a look for entries to recover is due (`take_batch` looks once the read
        finds nothing), nor with a batch window, which `take_batch` opens after a wait."""
        wait = not self.intake.recovery_due() and not self.settings.batch_timeout
        return self._hold(self._send(Outgoing(answers, []), read=True, wait=wait))

    def classify(self, batch: list[Entry]) -> Outgoing:
        """The batch's answers and the entries to drop, without the overlap: one turn of
        the loop for one batch."""
        due = self.start_pass(batch)
        return Outgoing(due.answers + (self.finish_pass() if self._pass else []), due.skipped)

    def teardown(self) -> None:
        self._inference.shutdown(wait=False)
        metrics.write(self.tally, self.redis, self.keys)  # what the last heartbeat missed
        try:
            registry.retire(self.redis, self.keys, self.name)
        except redis.RedisError as exc:
            log.warning("worker %s: could not retire from the registry: %s", self.name, exc)
        if self.abandoned:
            log.info("worker %s: stopped during a model load, which is abandoned", self.name)
        seconds = time.time() - self.started
        log.info("worker %s: stopped after %.0fs: %s", self.name, seconds, self.outcomes.summary())

    # -- signals --------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """The first SIGTERM or SIGINT is recorded (the loop stops after the batch in hand);
        a second gets the kernel's default action: the process ends at once, mid-batch,
        whatever Python is doing, and its requests stay pending for another worker."""
        self._stop.install()

    def _announce_stop(self, signum: int) -> None:
        log.info(
            "worker %s: %s, finishing the batch in hand (send again to stop now)",
            self.name,
            signal.Signals(signum).name,
        )

    # -- helpers --------------------------------------------------------------------

    def _streams(self) -> list[str]:
        """The streams of the models and versions it holds."""
        return [
            self.keys.stream(name, version)
            for name, versions in self.models.versions().items()
            for version in (None, *versions)
        ]

    def _heartbeat(self) -> None:
        if self.heartbeat.due():
            self.heartbeat.send(self.models.announcement(), self._status(), self._holding)

    def _check_redis(self) -> None:
        """Stop for good, not in a restart loop, on a Redis too old for Beagle's commands."""
        problem = version_problem(server_version(self.redis))
        if problem:
            log.error(
                "worker %s: %s; stopping with exit status %d, which systemd does not restart",
                self.name,
                problem,
                EX_CONFIG,
            )
            raise SystemExit(EX_CONFIG)

    def _running(self) -> "Future[list[PassResult]]":
        """The running forward passes (only called while they run)."""
        if self._pass is None:
            raise RuntimeError("no forward pass is running")
        return self._pass

    def _load_models(self, heartbeat: bool = True) -> bool:
        """`LoadedModels.refresh` on the inference thread; True if what it serves changed.
        A stop signal meanwhile abandons the load: it runs in C, which no signal interrupts,
        and may take minutes; there is no batch in hand to finish."""
        future = self._inference.submit(self.models.refresh)
        if self._wait(future, heartbeat=heartbeat, stoppable=True):
            return future.result()
        self.abandoned = True
        return False

    def _await(self, future: "Future[T]") -> T:
        """The future's result, heartbeating meanwhile (`_wait`)."""
        self._wait(future)
        return future.result()

    def _wait(
        self,
        future: "Future[Any]",
        until: float = float("inf"),
        heartbeat: bool = True,
        stoppable: bool = False,
    ) -> bool:
        """True once ``future`` is done; False at ``until`` (a monotonic time) or, if
        ``stoppable``, at a stop signal. Meanwhile the main thread keeps heartbeating, so a
        long forward pass or model load never looks like a dead worker nor loses its claim."""
        while (left := until - time.monotonic()) > 0:
            try:
                future.result(timeout=min(self.heartbeat.every, left))
                return True
            except FutureTimeout:
                if stoppable and self._stop.is_set():
                    return False
                if heartbeat:
                    self._heartbeat_meanwhile()
        return False

    def _heartbeat_meanwhile(self) -> None:
        try:
            self._heartbeat()
        except redis.RedisError as exc:  # the pass goes on; its answers wait
            log.warning(
                "worker %s: heartbeat failed (%s: %s) during a forward pass",
                self.name,
                type(exc).__name__,
                exc,
            )

    def _send(self, outgoing: Outgoing, read: bool, wait: bool = False) -> list[Entry]:
        """`Queue.reply` with ``outgoing`` in one pipeline, and with a read of what is
        queued when ``read``, waiting up to BLOCK_MS for it when ``wait``: the entries read.
        Kept until Redis has it."""
        self._unsent = outgoing
        pipe = self.redis.pipeline(transaction=False)
        self.queue.reply(pipe, outgoing, self.settings.result_ttl)
        streams = self._streams() if read else []
        if streams:
            size, block_ms = self.settings.max_batch_size, BLOCK_MS if wait else None
            self.queue.add_read(pipe, streams, self.name, size, block_ms)
        replies = pipe.execute()
        done = {id(entry) for entry, _ in outgoing.answers} | {id(e) for e in outgoing.skipped}
        self._unsent, self._holding = None, [e for e in self._holding if id(e) not in done]
        self.outcomes.stats["answered"] += len(outgoing.answers)
        return self.queue.entries(replies[-1]) if streams else []

    def _hold(self, batch: list[Entry]) -> list[Entry]:
        """``batch``, noted as taken and not yet acknowledged (its claim kept fresh), its
        queued JPEGs decoded."""
        self._holding += batch
        return decode_images(batch)

    def _status(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "models": self.models.versions(),
            "batches": self.outcomes.stats["batches"],
            "requests": self.outcomes.stats["requests"],
        }

    def _describe_models(self) -> str:
        return (
            ", ".join(
                f"{name} v{','.join(map(str, versions))}"
                for name, versions in self.models.versions().items()
            )
            or "nothing"
        )
