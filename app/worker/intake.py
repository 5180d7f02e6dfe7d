"""What a worker takes from the queue: new entries, waiting for them; and, before new ones,
those it held before a restart and those dead workers left pending past claim_idle."""

import logging
import time

from app.config import Settings
from app.queue import Entry, Queue
from app.stop_signals import StopSignals

log = logging.getLogger("beagle.worker")

BLOCK_MS = 1000  # longest wait on Redis, so stop requests are seen within a second


class Intake:
    def __init__(self, queue: Queue, settings: Settings, name: str, stop: StopSignals) -> None:
        self.queue = queue
        self.settings = settings
        self.name = name
        self._stop = stop
        self.reclaim = False  # entries this consumer held before a restart may wait
        self._claim_at = 0.0  # monotonic time the next look for dead workers' entries is due

    def read(self, streams: list[str], wait: bool) -> list[Entry]:
        """New entries: when ``wait``, up to BLOCK_MS for the first and batch_timeout for
        more; else only what is queued."""
        size = self.settings.max_batch_size
        if not streams:
            if wait:
                self._stop.wait(BLOCK_MS / 1000)
            return []
        batch = self.queue.read_new(streams, self.name, size, BLOCK_MS if wait else None)
        if not wait:
            return batch
        window_ends = time.monotonic() + self.settings.batch_timeout
        while batch and len(batch) < size and (left := window_ends - time.monotonic()) > 0:
            more = self.queue.read_new(
                streams, self.name, size - len(batch), max(1, int(left * 1000))
            )
            if not more:
                break
            batch += more
        return batch

    def recovery_due(self) -> bool:
        """Whether `recover` would look for entries now."""
        return self.reclaim or time.monotonic() >= self._claim_at

    def recover(self, streams: list[str]) -> list[Entry]:
        """Entries this consumer held before a restart (while `reclaim`), else, every
        claim_idle / 2, entries dead workers left pending; up to max_batch_size."""
        size = self.settings.max_batch_size
        if self.reclaim:
            own = [e for stream in streams for e in self.queue.reclaim_own(stream, self.name, size)]
            self.reclaim = bool(own)  # again until none is left
            if own:
                log.warning(
                    "worker %s: took back %d requests it held before a restart", self.name, len(own)
                )
                return own
        now = time.monotonic()
        if now < self._claim_at:
            return []
        self._claim_at = now + self.settings.claim_idle / 2
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
            self._claim_at = now  # there may be more
        return claimed
