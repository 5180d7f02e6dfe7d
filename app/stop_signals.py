"""Stop requests that arrive as signals (SIGTERM, SIGINT), recorded without a lock.

Python runs a signal handler in the main thread between two bytecodes, possibly while that
thread holds a lock: inside ``Event.wait``, a logging handler, a queue. A handler that takes
a lock (``Event.set``, ``Queue.put``, logging) can then wait for its own thread forever, and
no later signal breaks that. So the handler here only records the signal in a plain
attribute, and the interpreter's own C handler writes the signal's number to a pipe
(``signal.set_wakeup_fd``). The main loop waits on that pipe with `wait`, notices the stop
at once, and does the logging and stopping itself.
"""

import os
import select
import signal
from collections.abc import Callable
from types import FrameType
from typing import Self

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """The first stop signal, once one came. With ``then_default``, the handlers give way
    to the kernel's default action after the first signal, so that a second one ends the
    process at once, whatever it is doing (even inside C code, where no Python handler
    runs)."""

    def __init__(
        self, then_default: bool = False, announce: Callable[[int], None] | None = None
    ) -> None:
        """``announce(signum)`` runs once, in the thread that first notices the stop
        through `is_set` or `wait` (never in the handler)."""
        self.then_default = then_default
        self.announce = announce
        self.received: int | None = None  # the first stop signal's number
        self._announced = False
        self._wakeup: int | None = None  # the pipe's reading end

    def install(self) -> Self:
        """Install the handlers; call from the main thread."""
        self._wakeup, writer = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)
        return self

    def is_set(self) -> bool:
        """True once a stop signal came."""
        if self.received is None and self._wakeup is not None:
            self._drain()
        if self.received is not None and not self._announced:
            self._announced = True
            if self.announce:
                self.announce(self.received)
        return self.received is not None

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for a stop signal (less if another signal comes);
        True once one came."""
        if self._wakeup is None:
            raise RuntimeError("StopSignals.wait before install")
        if not self.is_set():
            select.select([self._wakeup], [], [], timeout)
        return self.is_set()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # No lock, no I/O here: see the module's docstring.
        if self.received is None:
            self.received = signum
        if self.then_default:
            for stop_signal in STOP_SIGNALS:
                signal.signal(stop_signal, signal.SIG_DFL)

    def _drain(self) -> None:
        """Read the pipe empty; a stop signal's number in it counts even if its Python
        handler has not run yet (the C handler may run in another thread)."""
        while self._wakeup is not None:
            try:
                data = os.read(self._wakeup, 512)
            except BlockingIOError:
                return
            for signum in data:
                if signum in STOP_SIGNALS and self.received is None:
                    self.received = signum
