"""A worker's heartbeat: in one round trip, its entry in the registry, its claim on the
entries it holds kept fresh, its tallies flushed, and Redis's clock read."""

import time
from typing import Any

from app import metrics, registry
from app.config import Settings
from app.queue import Entry, Queue
from app.redis_connection import follow_master

CLOCK_READ_MAX_S = 0.1  # a slower read of Redis's clock is not trusted (see `send`)


class Heartbeat:
    """`send` when `due`: every `every` seconds; `redis_now` reads Redis's clock from the last."""

    def __init__(self, queue: Queue, name: str, tally: metrics.Tally, settings: Settings) -> None:
        self.queue = queue
        self.name = name
        self.tally = tally
        self.ttl = settings.heartbeat_ttl
        # often enough that neither the registry's entry nor the claim lapses between two
        self.every = min(1.0, settings.heartbeat_ttl / 3, settings.claim_idle / 3)
        self.next_at = 0.0  # monotonic time the next one is due
        self._clock_offset: float | None = None  # Redis's clock minus this host's

    def due(self) -> bool:
        return time.monotonic() >= self.next_at

    def send(
        self, announcement: dict[str, Any], status: dict[str, Any], holding: list[Entry]
    ) -> None:
        self.next_at = time.monotonic() + self.every
        follow_master(self.queue.redis)
        pipe = self.queue.redis.pipeline(transaction=False)
        registry.announce(pipe, self.queue.keys, self.name, announcement, status, self.ttl)
        self.queue.hold(pipe, self.name, holding)
        self.tally.flush(pipe, self.queue.keys)
        pipe.time()
        sent = time.time()
        seconds, micros = pipe.execute()[-1]
        received = time.time()
        # Entry ids carry Redis's clock: deadlines and queue waits are measured on it. A
        # read stalled on its way (this process paused or descheduled, Redis busy) would
        # skew it by half the stall, so a slow one keeps the offset read before.
        if self._clock_offset is None or received - sent <= CLOCK_READ_MAX_S:
            self._clock_offset = seconds + micros / 1e6 - (sent + received) / 2

    def redis_now(self) -> float:
        """Redis's clock now, as of the last heartbeat, in seconds."""
        return time.time() + (self._clock_offset or 0.0)
