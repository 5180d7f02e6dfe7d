"""What becomes of each entry a worker takes.

`Outcomes.sort` decides, for a batch, which entries run, which are answered at once
(malformed, given up after max_attempts deliveries, for a version not served) and which
are dropped unanswered (expired); `Outcomes.answers` turns a forward pass's result into
answers. Every outcome is counted twice: in `stats`, for the worker's exit line and its
heartbeat status, and in the tally that /metrics reads.
"""

import logging
import time
from collections import Counter
from typing import Any

from app import trace_context
from app.metrics import Tally
from app.queue import Answer, Entry, Outgoing, error_answer
from app.worker.passes import PassResult, prediction, summary

log = logging.getLogger("beagle.worker")


class Outcomes:
    def __init__(self, worker_name: str, max_attempts: int, models: Any, tally: Tally) -> None:
        """``models``: the LoadedModels whose runners entries run on."""
        self.name = worker_name
        self.max_attempts = max_attempts
        self.models = models
        self.tally = tally
        self.stats: Counter = Counter()

    def sort(self, batch: list[Entry], now_ms: float) -> tuple[Outgoing, list[tuple[Entry, Any]]]:
        """The batch sorted, at ``now_ms`` on Redis's clock: what is due now (answers for
        the malformed, the given up and the not served; expired entries and malformed ones
        without an id to drop), and the entries to run, [(entry, runner)]."""
        due: Outgoing = Outgoing([], [])
        runnable = []
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
                    due.answers.append((entry, error_answer(400, entry.problem)))
                else:
                    due.skipped.append(entry)
            elif entry.expired(now_ms):
                self._count("expired", entry)
                due.skipped.append(entry)
            elif entry.deliveries > self.max_attempts:
                self._count("poisoned", entry)
                log.error(
                    "worker %s: request %s was delivered %d times; answering with an error",
                    self.name,
                    entry.request_id,
                    entry.deliveries,
                )
                why = f"inference failed {entry.deliveries - 1} times on this input; giving up"
                due.answers.append((entry, error_answer(500, why)))
            elif (runner := self.models.get(entry.model, entry.version)) is None:
                why = f"model {entry.model} version {entry.version} is not served"
                due.answers.append((entry, error_answer(404, why)))
            else:
                runnable.append((entry, runner))
        return due, runnable

    def answers(self, result: PassResult, redis_now: float) -> list[Answer]:
        """The answers of one forward pass that ended at ``redis_now`` (seconds, Redis's
        clock): its predictions, or the error for its one entry."""
        spec, entries = result.runner.spec, result.entries
        if isinstance(result.outcome, Exception):
            self.stats["failed"] += 1
            self.tally.count("failed", model=spec.name)
            why = summary(result.outcome)
            log.error(
                "worker %s: inference failed for request %s: %s",
                self.name,
                entries[0].request_id,
                why,
            )
            return [(entries[0], error_answer(500, f"inference failed: {why}"))]
        self._observe(spec, entries, result.took, redis_now)
        return [
            (e, prediction(spec, row, e.request.top_k))
            for e, row in zip(entries, result.outcome, strict=True)
        ]

    def summary(self) -> str:
        """The counts, for the worker's exit line."""
        s = self.stats
        return (
            f"{s['batches']} batches, {s['requests']} requests (mean batch "
            f"{s['requests'] / max(1, s['batches']):.1f}), {s['answered']} answered, "
            f"{s['failed']} failed, {s['expired']} expired, {s['poisoned']} poisoned, "
            f"{s['malformed']} malformed"
        )

    def _count(self, outcome: str, entry: Entry) -> None:
        self.stats[outcome] += 1
        self.tally.count(outcome, model=entry.model)

    def _observe(self, spec: Any, entries: list[Entry], took: float, redis_now: float) -> None:
        self.stats["batches"] += 1
        self.stats["requests"] += len(entries)
        # The time first: the metrics thread may flush between these, and a reader that
        # sees the batch counted (app/metrics.py `model_figures`) must see when it ran.
        self.tally.note("last_inference", time.time(), model=spec.name)
        self.tally.observe("batch_size", len(entries), model=spec.name)
        self.tally.observe("inference_seconds", took, model=spec.name)
        for entry in entries:
            waited = max(0.0, redis_now - took - entry.queued_ms / 1000)
            self.tally.observe("queue_wait_seconds", waited, model=spec.name)
        log.debug(
            "worker %s: batch of %d for %s v%d in %.1f ms: %s",
            self.name,
            len(entries),
            spec.name,
            spec.version,
            took * 1000,
            " ".join(f"{e.request_id} (trace {_trace_id(e)})" for e in entries),
        )


def _trace_id(entry: Entry) -> str:
    parent = trace_context.parse(entry.request.trace if entry.request else "")
    return parent.trace_id if parent else "-"
