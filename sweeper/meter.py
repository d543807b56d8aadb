"""How far long work has got, reported cheaply: training batches, the cache build, the decode check.

The code doing the work counts with a :class:`Meter`; the meter hands a :class:`Work` to this process's
sink at most every :data:`EVERY_S` seconds (and at the start and the end), so counting costs a clock
read per step. Nothing is sent while no sink is set (the default). A trial process sets a sink that
sends each :class:`Work` over its pipe to the sweep; ``refit-best`` and ``check`` set one that shows it.
Like :mod:`sweeper.faults`, this module imports nothing of the project: every package may use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

EVERY_S = 0.5  # at most two reports a second: a display refreshes at 4 Hz, a log line comes every 30 s


@dataclass(frozen=True)
class Work:
    """One report of a piece of work; small, so it crosses a pipe in microseconds."""

    what: str  # "train", "cache build", "decode check"
    done: int  # steps done: batches when training, images otherwise
    total: int  # steps in this piece (an epoch's batches, the images to decode)
    seconds: float  # since the piece started
    images: int = 0  # images through so far, for images/s
    epoch: int = 0  # training: the epoch (of its fold)
    loss: float | None = None  # training: the running mean loss of the epoch

    @property
    def rate(self) -> float | None:
        """Images per second so far, None before any."""
        return self.images / self.seconds if self.images and self.seconds > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left in this piece at the pace so far; None before the first step."""
        if self.done <= 0 or self.seconds <= 0:
            return None
        return max(0.0, (self.total - self.done) * self.seconds / self.done)


Sink = Callable[[Work], None]
_sink: Sink | None = None


def set_sink(sink: Sink | None) -> Sink | None:
    """Where this process's reports go from now on (None: nowhere); returns the previous sink."""
    global _sink
    previous, _sink = _sink, sink
    return previous


class Meter:
    """Counts the steps of one piece of work and reports them, throttled, to the sink.

    Args:
        what: the kind of work, as shown (``"train"`` for an epoch's batches).
        total: steps in the piece.
        epoch: the epoch of a training piece.
        every: seconds between reports at most.
        clock: a monotonic clock (a test passes its own).
    """

    def __init__(
        self,
        what: str,
        total: int,
        epoch: int = 0,
        every: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.epoch, self.every, self.clock = what, total, epoch, every, clock
        self.sink = _sink
        self.done = self.images = 0
        self.t0 = clock()
        self._last = float("-inf")
        self._send(None)

    def step(self, n: int = 1, images: int = 0, loss: Callable[[], float] | None = None) -> None:
        """``n`` steps done (``images`` images in them). ``loss`` is called only when a report goes out:
        reading a loss from an accelerator waits for it, so not on every step."""
        self.done += n
        self.images += images
        if self.sink is not None and (self.done >= self.total or self.clock() - self._last >= self.every):
            self._send(loss)

    def _send(self, loss: Callable[[], float] | None) -> None:
        if self.sink is None:
            return
        now = self.clock()
        self._last = now
        value = None if loss is None else loss()
        self.sink(Work(self.what, self.done, self.total, now - self.t0, self.images, self.epoch, value))


def counter(what: str, total: int) -> Callable[[int], None]:
    """A callback ``progress(done)`` for work that counts its own steps (the cache build, which gets it
    as a parameter); reports to this process's sink through a :class:`Meter`."""
    m = Meter(what, total)

    def progress(done: int) -> None:
        m.step(done - m.done, images=done - m.done)

    return progress
