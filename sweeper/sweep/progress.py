"""Live progress of a running study: trial k of N, epoch, current and best value, pruned/failed, ETA.

The objective calls :meth:`Progress.trial_started` and :meth:`Progress.epoch`; the CLI's end-of-trial
callback calls :meth:`Progress.trial_finished` with the study's counts from storage (so trials run by
other workers, or before a resume, are counted too). :class:`Progress` itself shows nothing; a terminal
gets :class:`RichProgress` (a live bar), logs and CI get :class:`PlainProgress` (one line per event).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


def clock(seconds: float | None) -> str:
    """``H:MM:SS``, or ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


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

    # ---- events --------------------------------------------------------------------------------

    def trial_started(self, number: int) -> None:
        self.number, self.epoch_now, self.value = number, 0, None
        self._trial_t0 = time.monotonic()
        self._epoch_t0 = self._trial_t0
        self.show_trial_started()

    def epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        self._epoch_seconds.append(now - self._epoch_t0)
        self._epoch_t0 = now
        self.number, self.epoch_now, self.value = number, epoch, metrics.get(self.metric)
        self.show_epoch()

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

    def where(self) -> str:
        trial = f"trial {self.k}/{self.total}"
        if self.number is not None:
            trial += f" (#{self.number}) epoch {self.epoch_now}/{self.epochs}"
        return trial

    # ---- display: overridden by the visible kinds ----------------------------------------------

    def show_trial_started(self) -> None: ...
    def show_update(self) -> None: ...
    def show_epoch(self) -> None: ...
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
    """One line per epoch and per finished trial: for logs, pipes and CI, where a live bar is noise."""

    def __init__(self, total: int, epochs: int, metric: str, stream: IO[str] | None = None) -> None:
        super().__init__(total, epochs, metric)
        self.stream = stream or sys.stdout

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def show_epoch(self) -> None:
        self._print(
            f"{self.where()}: {self.status()} | elapsed {clock(self.elapsed())}, eta {clock(self.eta())}"
        )

    def show_trial_finished(self, number: int, state: str, value: float | None, reason: str) -> None:
        self._print(
            f"{self.result_line(number, state, value, reason)} | {self.done}/{self.total} done, "
            f"{self.status().split(' | ', 1)[1]} | elapsed {clock(self.elapsed())}, eta {clock(self.eta())}"
        )


class RichProgress(Progress):
    """A live bar of trials over a line with the running trial's epoch and values (fits 80 columns);
    finished trials print above it and stay."""

    def __init__(self, total: int, epochs: int, metric: str, console: Console | None = None) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar
        from rich.text import Text

        super().__init__(total, epochs, metric)
        self.console = console or Console()
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
        running = "" if self.number is None else f"#{self.number} epoch {self.epoch_now}/{self.epochs} | "
        self.line.plain = f"  {running}{self.status()}"

    def show_trial_started(self) -> None:
        self._refresh()

    def show_update(self) -> None:
        self._refresh()

    def show_epoch(self) -> None:
        self._refresh()

    def show_trial_finished(self, number: int, state: str, value: float | None, reason: str) -> None:
        from rich.text import Text

        style = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(state, "")
        self.console.print(Text(self.result_line(number, state, value, reason), style=style))
        self._refresh()

    def close(self) -> None:
        self._refresh()
        self.live.stop()


def wants_live(stream: IO[str] | None = None) -> bool:
    """A live display only on a terminal, and never in CI (``CI`` set to anything but false/0)."""
    stream = stream or sys.stdout
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return not ci and hasattr(stream, "isatty") and stream.isatty()


def create(total: int, epochs: int, metric: str) -> Progress:
    """The display for stdout: :class:`RichProgress` on a terminal, else :class:`PlainProgress`."""
    if wants_live():
        return RichProgress(total, epochs, metric)
    return PlainProgress(total, epochs, metric)
