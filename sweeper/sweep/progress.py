"""Live progress of a running study: trial k of N, each running trial's epoch and batches (images/s,
running loss, ETA), the current and best value, pruned/failed, the sweep's ETA.

The objective calls :meth:`Progress.trial_started`, :meth:`Progress.epoch` and, a few times a second,
:meth:`Progress.working` with a trial process's :class:`~sweeper.meter.Work`; the CLI's end-of-trial
callback calls :meth:`Progress.trial_finished` with the study's counts from storage (so trials run by
other workers, or before a resume, are counted too). :class:`Progress` itself shows nothing (``--quiet``);
a terminal gets :class:`RichProgress` (a live bar and one line per running trial), logs and CI get
:class:`PlainProgress` (each finished trial, and the running ones every ``SWEEPER_PROGRESS_S`` seconds).
Everything goes to stderr: stdout keeps the results (and ``--json``'s document) alone.

:class:`WorkDisplay` shows the same kind of line for work outside a sweep (``refit-best``, ``check``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from sweeper import meter
from sweeper.errors import SweeperError
from sweeper.meter import Work

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

INTERVAL_ENV = "SWEEPER_PROGRESS_S"
DEFAULT_INTERVAL_S = 30.0  # a log line this often: enough to see it move, few enough to read a day's log


def clock(seconds: float | None) -> str:
    """``H:MM:SS``, or ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def interval() -> float:
    """Seconds between progress lines in a log: ``SWEEPER_PROGRESS_S``, default 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SweeperError(f"{INTERVAL_ENV}={raw!r}: expected seconds > 0, e.g. 30")
    return value


def rate(images_per_s: float | None) -> str:
    if images_per_s is None:
        return "? img/s"
    return f"{images_per_s:.0f} img/s" if images_per_s >= 100 else f"{images_per_s:.1f} img/s"


def work_line(work: Work, epochs: int | None = None) -> str:
    """One piece of work as a person reads it: ``epoch 2/5: batch 120/400, 850 img/s, loss 1.2345,
    eta 0:00:40`` or ``cache build: 5000/21000 images, 830 img/s, eta 0:00:19``."""
    if work.what == "train":
        of = f"/{epochs}" if epochs else ""
        head = f"epoch {work.epoch}{of}: batch {work.done}/{work.total}"
    else:
        head = f"{work.what}: {work.done}/{work.total} images"
    loss = "" if work.loss is None else f", loss {work.loss:.4f}"
    return f"{head}, {rate(work.rate)}{loss}, eta {clock(work.eta)}"


@dataclass
class Running:
    """What the display knows of one running trial."""

    epoch: int = 0  # the last epoch reported
    value: float | None = None  # the metric after it
    work: Work | None = None  # the piece under way (an epoch's batches, the cache build)


class Ticker:
    """Calls ``fn`` every ``seconds`` in a daemon thread until :meth:`stop`: the log's steady lines."""

    def __init__(self, seconds: float, fn: Callable[[], None]) -> None:
        self.seconds, self.fn = seconds, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-ticker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            self.fn()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Progress:
    """Keeps the numbers behind the display; shows nothing (the default when nobody is watching)."""

    def __init__(self, total: int, epochs: int, metric: str) -> None:
        self.total, self.epochs, self.metric = total, epochs, metric
        self.done = 0  # trials that count towards --trials, from storage
        self.pruned = self.failed = 0
        self.best: float | None = None
        self.number: int | None = None  # Optuna's number of the running trial
        self.epoch_now = 0
        self.value: float | None = None
        self.t0 = time.monotonic()
        self._trial_t0 = self._epoch_t0 = self.t0
        self._durations: list[float] = []  # trials finished in this session
        self._epoch_seconds: list[float] = []
        self.running: dict[int, Running] = {}  # by trial number: several with --workers
        self.lock = threading.Lock()  # workers' threads report, a ticker reads

    # ---- events --------------------------------------------------------------------------------

    def trial_started(self, number: int) -> None:
        self.number, self.epoch_now, self.value = number, 0, None
        self._trial_t0 = time.monotonic()
        self._epoch_t0 = self._trial_t0
        with self.lock:
            self.running[number] = Running()
        self.show_trial_started()

    def epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        self._epoch_seconds.append(now - self._epoch_t0)
        self._epoch_t0 = now
        self.number, self.epoch_now, self.value = number, epoch, metrics.get(self.metric)
        with self.lock:
            self.running[number] = Running(epoch, metrics.get(self.metric))
        self.show_epoch()

    def working(self, number: int, work: Work) -> None:
        """A trial process's report from inside an epoch (or its cache build); a few a second."""
        with self.lock:
            self.running.setdefault(number, Running()).work = work
        self.show_working()

    def trial_finished(
        self,
        number: int,
        state: str,
        value: float | None,
        reason: str,
        counts: dict[str, int],
        best: float | None,
    ) -> None:
        """Called once per trial, with the study's counts and best value after it."""
        self._durations.append(time.monotonic() - self._trial_t0)
        self.number = None
        with self.lock:
            self.running.pop(number, None)
        self.update(counts, best)
        self.show_trial_finished(number, state, value, reason)

    def update(self, counts: dict[str, int], best: float | None) -> None:
        """The study's counts (see ``study.counts``) and best value as storage has them: at the start
        (a resumed study already has trials) and after every trial."""
        self.done = counts.get("counted", self.done)
        self.pruned, self.failed = counts.get("pruned", 0), counts.get("fail", 0)
        self.best = best
        self.show_update()

    # ---- numbers -------------------------------------------------------------------------------

    @property
    def k(self) -> int:
        """1-based position of the running trial among the N the study should hold."""
        return min(self.done + 1, self.total)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def eta(self) -> float | None:
        """Seconds left: the mean trial time of this session (pruned ones included) times the trials
        left, less what the running trial has done; before any trial ends, from the epoch times."""
        running = self.number is not None
        left = max(0, self.total - self.done)
        if left == 0:
            return 0.0
        into = time.monotonic() - self._trial_t0 if running else 0.0
        if self._durations:
            per_trial = sum(self._durations) / len(self._durations)
        elif self._epoch_seconds:
            per_trial = self.epochs * sum(self._epoch_seconds) / len(self._epoch_seconds)
        else:
            return None
        return max(0.0, per_trial * left - min(into, per_trial))

    def status(self) -> str:
        cur = "-" if self.value is None else f"{self.value:.4f}"
        best = "-" if self.best is None else f"{self.best:.4f}"
        return f"{self.metric} {cur} | best {best} | {self.pruned} pruned, {self.failed} failed"

    def summary(self) -> str:
        """The sweep as a whole, in one line: counts, best value, time."""
        best = "-" if self.best is None else f"{self.best:.4f}"
        return (
            f"{self.done}/{self.total} trials done | best {self.metric} {best} | {self.pruned} pruned, "
            f"{self.failed} failed | elapsed {clock(self.elapsed())}, eta {clock(self.eta())}"
        )

    def trial_lines(self) -> list[str]:
        """One line per running trial: ``#3 epoch 2/5: batch 120/400, 850 img/s, loss 1.2345, eta
        0:00:40 | val_acc 0.7100`` (the value after the last finished epoch)."""
        with self.lock:
            running = sorted(self.running.items())
        lines = []
        for number, r in running:
            now = work_line(r.work, self.epochs) if r.work is not None else f"epoch {r.epoch}/{self.epochs}"
            if r.work is None and not r.epoch:
                now = "starting"  # before its process reports: set-up, weights, the fork
            value = "" if r.value is None else f" | {self.metric} {r.value:.4f}"
            lines.append(f"#{number} {now}{value}")
        return lines

    def where(self) -> str:
        trial = f"trial {self.k}/{self.total}"
        if self.number is not None:
            trial += f" (#{self.number}) epoch {self.epoch_now}/{self.epochs}"
        return trial

    # ---- display: overridden by the visible kinds ----------------------------------------------

    def show_trial_started(self) -> None: ...
    def show_update(self) -> None: ...
    def show_epoch(self) -> None: ...
    def show_working(self) -> None: ...
    def show_trial_finished(self, number: int, state: str, value: float | None, reason: str) -> None: ...

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None: ...

    def result_line(self, number: int, state: str, value: float | None, reason: str) -> str:
        """The permanent line for a finished trial (the same in both displays)."""
        shown = f" {self.metric}={value:.4f}" if value is not None else ""
        why = f" {reason}" if reason else ""
        return f"trial {number}: {state}{shown}{why}"


class PlainProgress(Progress):
    """For logs, pipes and CI, where a live bar is noise: a line per finished trial, and every
    ``seconds`` (``SWEEPER_PROGRESS_S``, default 30) the sweep's line and one per running trial, all
    starting ``progress``, so a long epoch shows its batches instead of nothing."""

    def __init__(
        self,
        total: int,
        epochs: int,
        metric: str,
        stream: IO[str] | None = None,
        seconds: float | None = None,
    ) -> None:
        super().__init__(total, epochs, metric)
        self.stream = stream or sys.stderr
        self.seconds = interval() if seconds is None else seconds
        self.ticker: Ticker | None = None

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def tick(self) -> None:
        """The steady lines: where the sweep is, then each running trial."""
        at = f"progress {clock(self.elapsed())}"
        lines = [f"{at} | {self.summary()}", *(f"{at} |   {t}" for t in self.trial_lines())]
        self._print("\n".join(lines))

    def __enter__(self) -> Progress:
        self.ticker = Ticker(self.seconds, self.tick)
        return self

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.stop()

    def show_trial_finished(self, number: int, state: str, value: float | None, reason: str) -> None:
        self._print(
            f"{self.result_line(number, state, value, reason)} | {self.done}/{self.total} done, "
            f"{self.status().split(' | ', 1)[1]} | elapsed {clock(self.elapsed())}, eta {clock(self.eta())}"
        )


class RichProgress(Progress):
    """A live bar of trials over the sweep's line and one line per running trial (its epoch, batches,
    images/s, loss and ETA; fits 80 columns with one trial); finished trials print above it and stay."""

    def __init__(self, total: int, epochs: int, metric: str, console: Console | None = None) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar
        from rich.text import Text

        super().__init__(total, epochs, metric)
        self.console = console or Console(stderr=True)
        self.bar = Bar(
            TextColumn("[bold]trial {task.fields[k]}/{task.total}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=self.console,
        )
        self.task = self.bar.add_task("trials", total=total, completed=0, k=self.k, eta="?")
        self.line = Text()
        self.live = Live(Group(self.bar, self.line), console=self.console, refresh_per_second=4)
        self.live.start()

    def _refresh(self) -> None:
        self.bar.update(self.task, completed=self.done, k=self.k, eta=clock(self.eta()))
        best = "-" if self.best is None else f"{self.best:.4f}"
        counts = f"  best {self.metric} {best} | {self.pruned} pruned, {self.failed} failed"
        self.line.plain = "\n".join([counts, *(f"  {t}" for t in self.trial_lines())])

    def show_trial_started(self) -> None:
        self._refresh()

    def show_update(self) -> None:
        self._refresh()

    def show_epoch(self) -> None:
        self._refresh()

    def show_working(self) -> None:
        self._refresh()

    def show_trial_finished(self, number: int, state: str, value: float | None, reason: str) -> None:
        from rich.text import Text

        style = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(state, "")
        self.console.print(Text(self.result_line(number, state, value, reason), style=style))
        self._refresh()

    def close(self) -> None:
        self._refresh()
        self.live.stop()


class WorkDisplay:
    """Shows this process's meter reports (:mod:`sweeper.meter`) while it is entered: work outside a
    sweep, such as ``refit-best``'s epochs and ``check``'s decode. A live line on a terminal; in a log,
    a ``progress`` line every ``seconds``; nothing when ``show`` is false (``--quiet``)."""

    def __init__(
        self,
        epochs: int | None = None,
        show: bool = True,
        stream: IO[str] | None = None,
        seconds: float | None = None,
    ) -> None:
        self.epochs, self.show = epochs, show
        self.stream = stream or sys.stderr
        self.seconds = interval() if seconds is None else seconds
        self.work: Work | None = None
        self.t0 = time.monotonic()
        self._live: Live | None = None
        self._text: Text | None = None
        self._ticker: Ticker | None = None
        self._previous: meter.Sink | None = None

    def line(self) -> str | None:
        """The current work's line, or None before the first report."""
        work = self.work
        return None if work is None else f"{work_line(work, self.epochs)} | elapsed {clock(self.elapsed())}"

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, work: Work) -> None:
        self.work = work
        if self._text is not None:
            self._text.plain = f"  {self.line()}"

    def tick(self) -> None:
        line = self.line()
        if line is not None:
            print(f"progress {line}", file=self.stream, flush=True)

    def __enter__(self) -> WorkDisplay:
        if self.show and wants_live(self.stream):
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            self._text = text = Text()
            self._live = live = Live(text, console=Console(file=self.stream), refresh_per_second=4)
            live.start()
        elif self.show:
            self._ticker = Ticker(self.seconds, self.tick)
        self._previous = meter.set_sink(self)
        return self

    def __exit__(self, *exc: object) -> None:
        meter.set_sink(self._previous)
        if self._ticker is not None:
            self._ticker.stop()
        if self._live is not None:
            self._live.stop()


def wants_live(stream: IO[str] | None = None) -> bool:
    """A live display only on a terminal, and never in CI (``CI`` set to anything but false/0)."""
    stream = stream or sys.stderr
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return not ci and hasattr(stream, "isatty") and stream.isatty()


def create(total: int, epochs: int, metric: str, show: bool = True) -> Progress:
    """The display for stderr: :class:`RichProgress` on a terminal, else :class:`PlainProgress`; with
    ``show`` false (``--quiet``) a :class:`Progress` that shows nothing."""
    if not show:
        return Progress(total, epochs, metric)
    if wants_live():
        return RichProgress(total, epochs, metric)
    return PlainProgress(total, epochs, metric)
