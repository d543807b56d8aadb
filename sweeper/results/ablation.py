"""The ablation table: what each on/off dimension of a study did to the objective, with an interval.

A study like ``ablation-aug`` searches every augmentation as a boolean; its question is "which toggle
helps?". For each boolean dimension we compare the trials that had it on with those that had it off:
the difference of their mean objective, and a bootstrap interval for that difference.

What "comparable" means. A pruned trial stopped early, so its last value is not comparable with a
complete trial's best over all epochs. Every trial is therefore read at one common epoch ``E``: its
best value up to and including epoch ``E`` (for a complete trial at its last epoch that is exactly its
objective value). Trials that stopped before ``E`` are left out, as are failed and running ones.
``E`` is the deepest epoch at which the most dimensions have at least two trials on each side: with
little pruning that is the full budget (final values only); when most trials were pruned early it is
the epoch where they still count. The choice looks only at how many trials reached each epoch, never
at their values, so it cannot tilt an effect.

The interval treats trials as independent draws. They are not quite: an adaptive sampler (TPE)
picks later trials from earlier ones, and the other dimensions vary too. Read the table as a screen
that tells which toggles deserve a controlled comparison, not as one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from sweeper.store.record import curve

Direction = Literal["maximize", "minimize"]
Verdict = Literal["helps", "hurts", "unclear", "too few trials"]

CAVEAT = (
    "Read this table as a screen, not a test: the sampler chose the trials (an adaptive one such as TPE "
    "unbalances the on/off arms and ties toggles to each other, so a difference of means measures the "
    "sampler too), the other options vary as well, and a pruner stops slow starters (CutMix, MixUp, "
    "RandAugment pay off late) early, so the common epoch favours fast starters. For effects you can "
    "believe, run the toggles as a design (`design:` in the study file): sweeper then fits them jointly."
)
"""What the marginal-means table cannot tell, printed with it."""

RESAMPLES = 2000  # bootstrap resamples: the 2.5/97.5% quantiles are stable to ~0.001 at this count
LEVEL = 0.95  # coverage of the interval
MIN_PER_ARM = 2  # trials needed on each side before an interval means anything


@dataclass(frozen=True)
class Row:
    """One boolean dimension: the objective with it on and off, and the difference (on - off)."""

    param: str
    n_on: int
    n_off: int
    mean_on: float | None
    mean_off: float | None
    effect: float | None  # mean_on - mean_off, in objective units
    low: float | None  # LEVEL bootstrap interval of the effect
    high: float | None
    verdict: Verdict


@dataclass(frozen=True)
class Ablation:
    """The table and what it was computed from, so a reader can judge it."""

    metric: str
    direction: Direction
    epoch: int  # the common epoch E every trial is read at (0: no finished trial)
    n_complete: int  # trials read at E, by state
    n_pruned: int
    n_stopped_earlier: int  # finished trials left out because they stopped before E
    n_failed: int
    rows: tuple[Row, ...]


def _finished(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    ok = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in trials if t.state in ok and curve(t)]


def comparison_epoch(trials: Sequence[FrozenTrial], params: Sequence[str]) -> int:
    """The deepest epoch at which the most of ``params`` have MIN_PER_ARM trials on and off each
    (0 when no trial finished)."""
    finished = _finished(trials)
    if not finished:
        return 0

    def comparable(epoch: int) -> int:
        reached = [t for t in finished if epoch in curve(t)]
        return sum(
            min(sum(t.params.get(p) is True for t in reached), sum(t.params.get(p) is False for t in reached))
            >= MIN_PER_ARM
            for p in params
        )

    deepest = max(max(curve(t)) for t in finished)
    return max(range(1, deepest + 1), key=lambda e: (comparable(e), e))


def value_at(trial: FrozenTrial, epoch: int, direction: Direction) -> float | None:
    """The trial's best reported value up to ``epoch``; None if it never reported that epoch."""
    if epoch not in curve(trial):
        return None
    values = [v for step, v in curve(trial).items() if step <= epoch and math.isfinite(v)]
    if not values:
        return None
    return max(values) if direction == "maximize" else min(values)


def bootstrap_interval(on: np.ndarray, off: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(on) - mean(off)``, resampling each arm on its own."""
    rng = np.random.default_rng(seed)
    means_on = on[rng.integers(0, len(on), (RESAMPLES, len(on)))].mean(1)
    means_off = off[rng.integers(0, len(off), (RESAMPLES, len(off)))].mean(1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means_on - means_off, [tail, 100 - tail])
    return float(low), float(high)


def _row(param: str, on: list[float], off: list[float], direction: Direction, seed: int) -> Row:
    mean_on = float(np.mean(on)) if on else None
    mean_off = float(np.mean(off)) if off else None
    effect = mean_on - mean_off if mean_on is not None and mean_off is not None else None
    if effect is None or min(len(on), len(off)) < MIN_PER_ARM:
        return Row(param, len(on), len(off), mean_on, mean_off, effect, None, None, "too few trials")
    low, high = bootstrap_interval(np.array(on), np.array(off), seed)
    sign = 1 if direction == "maximize" else -1
    verdict: Verdict = "unclear"
    if sign * low > 0 and sign * high > 0:
        verdict = "helps"
    elif sign * low < 0 and sign * high < 0:
        verdict = "hurts"
    return Row(param, len(on), len(off), mean_on, mean_off, effect, low, high, verdict)


def compute(
    trials: Sequence[FrozenTrial],
    params: Sequence[str],
    metric: str,
    direction: Direction,
    epoch: int | None = None,
    seed: int = 0,
) -> Ablation:
    """The ablation table of ``params`` (the study's boolean dimensions), most helpful first.

    Args:
        epoch: read every trial at this epoch; None picks :func:`comparison_epoch`.
        seed: the bootstrap's seed, so the same study always gives the same table.
    """
    finished = _finished(trials)
    e = comparison_epoch(trials, params) if epoch is None else epoch
    read = [(t, value_at(t, e, direction)) for t in finished]
    used = [(t, v) for t, v in read if v is not None]
    rows = []
    for param in params:
        on = [v for t, v in used if t.params.get(param) is True]
        off = [v for t, v in used if t.params.get(param) is False]
        rows.append(_row(param, on, off, direction, seed))
    sign = 1 if direction == "maximize" else -1
    rows.sort(key=lambda r: (r.effect is None, -sign * (r.effect or 0.0), r.param))
    return Ablation(
        metric=metric,
        direction=direction,
        epoch=e,
        n_complete=sum(t.state == TrialState.COMPLETE for t, _ in used),
        n_pruned=sum(t.state == TrialState.PRUNED for t, _ in used),
        n_stopped_earlier=len(finished) - len(used),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        rows=tuple(rows),
    )


def summary(ab: Ablation) -> str:
    """One sentence saying which trials the table compares, and which it leaves out."""
    if ab.epoch == 0:
        return f"no complete or pruned trial has reported {ab.metric} yet"
    best = "highest" if ab.direction == "maximize" else "lowest"
    return (
        f"{ab.metric} at epoch {ab.epoch} ({best} value up to that epoch) of {ab.n_complete + ab.n_pruned} "
        f"trials ({ab.n_complete} complete, {ab.n_pruned} pruned); left out: {ab.n_stopped_earlier} "
        f"stopped before epoch {ab.epoch}, {ab.n_failed} failed. effect = mean(on) - mean(off), "
        f"{LEVEL:.0%} bootstrap interval"
    )


def fmt_value(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def interval_text(row: Row) -> str:
    return "-" if row.low is None or row.high is None else f"[{row.low:+.4f}, {row.high:+.4f}]"


def format_table(ab: Ablation) -> list[str]:
    """The table as aligned text lines, for ``sweeper show --ablation``."""
    width = max([len("param"), *(len(r.param) for r in ab.rows)])
    head = (
        f"{'param':<{width}}  {'on':>3} {'off':>3}  {'mean on':>8} {'mean off':>8}  {'effect':>8}  "
        f"{f'{LEVEL:.0%} interval':<20}  verdict"
    )
    lines = [summary(ab), "", head]
    for r in ab.rows:
        lines.append(
            f"{r.param:<{width}}  {r.n_on:>3} {r.n_off:>3}  {fmt_value(r.mean_on):>8} "
            f"{fmt_value(r.mean_off):>8}  {fmt_value(r.effect, True):>8}  {interval_text(r):<20}  {r.verdict}"
        )
    return [*lines, "", CAVEAT]
