"""A web process's turn: which of its threads runs a prediction request's Python now.

A process has many threads, so that every request in flight reaches admission (which
sees the model's queue) and a slow client holds up one thread, not the process. But they
share one GIL, which runs one thread at a time and is not fair: with dozens of requests
parsing at once, some lose it again and again, and the tail grows (docs/performance.md).
So a prediction request runs only while it holds its process's turn, and hands it on while
it waits on something it knows to be slow (its answers, an in-flight slot, a registry read
from Redis, its decode). The turn goes in order: to a thread coming back from such a wait
first (its request is nearly done, and its client has waited longest), then to new
requests by arrival. A holder that keeps the turn past HOLD_S (a body still arriving from a
slow client, a stall) loses it to the next in line, so no one thread can stop the line.
Threads in line sleep on a lock of their own, outside the GIL, and wake to look whether
the holder overstays: every LOOK_S, and the first in line every HOLD_S once it knows it is
first (when it joins the line, or when a thread ahead takes over). After a plain hand-off
the new first does not know it: a thread joining the line that finds the holder
overstaying wakes it, so under load a stall is noticed within HOLD_S and the next arrival;
with no arrivals, within LOOK_S."""

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HOLD_S = 0.005  # longest hold before the next in line takes the turn; a request's is ~1 ms
# How often the others in line look whether they are first and the holder overstays. Each
# look wakes a thread and takes the GIL, and a long line looks often: docs/performance.md.
LOOK_S = 0.5


class _Place:
    """A thread in line: ``wake`` is released to hand it the turn (``handed``), or to have
    it look at once whether the holder overstays."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.wake = _locked()
        self.handed = False


def _locked() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class Turn:
    """One turn, handed from thread to thread in order, never to a thread that came
    later; threads ``returning`` go before new ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None  # the thread that holds the turn
        self._since: float | None = None  # when it began to run with it (time.monotonic)
        self._members: set[int] = set()  # threads whose request runs in turns, until done()
        self._returning: deque[_Place] = deque()
        self._new: deque[_Place] = deque()

    def take(self, timeout: float, returning: bool = False) -> bool:
        """Wait up to ``timeout`` seconds for the turn: whether this thread holds it. From
        then until `done`, this thread's request runs in turns (`aside`)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._members.add(threading.get_ident())
            if self._holder is None:
                self._hold(threading.get_ident())
                return True
            place = _Place()
            (self._returning if returning else self._new).append(place)
            first = self._first() is place
            if not first and self._overstays():
                self._wake_first()  # it may not know it is first: it takes over now
        while True:
            look = HOLD_S if first else LOOK_S
            left = deadline - time.monotonic()
            woken = place.wake.acquire(timeout=max(0.0, min(left, look)))
            with self._lock:
                if place.handed:
                    self._since = time.monotonic()  # running only now: overstays from now
                    return True
                if woken:  # now first in line: a thread ahead took over
                    place.wake = _locked()
                first = self._first() is place
                if first and self._overstays():
                    self._leave(place)
                    self._hold(place.thread)  # the holder overstayed: it runs on without
                    self._wake_first()  # to watch this holder in turn
                    return True
                if time.monotonic() >= deadline:
                    self._leave(place)
                    return False

    def give_back(self) -> None:
        """If this thread holds the turn, hand it to the next in line or leave it free."""
        with self._lock:
            self._hand_on()

    def held(self) -> bool:
        """Whether this thread holds the turn."""
        return self._holder == threading.get_ident()

    def done(self) -> None:
        """This thread's request is over: hand the turn on if it holds it."""
        with self._lock:
            self._hand_on()
            self._members.discard(threading.get_ident())

    @contextmanager
    def aside(self, within: Callable[[], float]) -> Iterator[None]:
        """Hand the turn on for the block (a wait), then take it back ahead of new
        requests, waiting up to ``within()`` seconds; past that, go on without it. A
        request that lost the turn by overstaying takes it back here too; one the block
        refuses or fails leaves without it, at once. Outside a request, nothing."""
        if threading.get_ident() not in self._members:
            yield
            return
        self.give_back()
        yield  # an exception leaves here, without taking the turn back
        self.take(within(), returning=True)

    def _hand_on(self) -> None:
        """With the lock held: if this thread holds the turn, hand it to the next in line
        or leave it free."""
        if self._holder != threading.get_ident():
            return
        line = self._returning or self._new
        if not line:
            self._holder = None
            return
        place = line.popleft()
        place.handed = True
        self._holder, self._since = place.thread, None  # until it wakes
        if place.wake.locked():
            place.wake.release()

    def _overstays(self) -> bool:
        """With the lock held: whether the holder has run with the turn past HOLD_S."""
        return self._since is not None and time.monotonic() - self._since > HOLD_S

    def _hold(self, thread: int) -> None:
        self._holder, self._since = thread, time.monotonic()

    def _leave(self, place: _Place) -> None:
        (self._returning if place in self._returning else self._new).remove(place)

    def _first(self) -> _Place | None:
        """Who the turn goes to next."""
        line = self._returning or self._new
        return line[0] if line else None

    def _wake_first(self) -> None:
        """Wake the first in line, to watch for an overstaying holder from now on."""
        first = self._first()
        if first is not None and first.wake.locked():
            first.wake.release()
