"""How sure a confirmed winner is: its paired difference to another configuration, with a one-sided bound.

Confirmation trains every candidate with the same seeds, so seed k of A and seed k of B share their
seed's luck (initialisation, data order, augmentation draws). The difference d_k = A_k - B_k cancels it,
and the mean of the d_k with a one-sided Student t bound, mean(d) - t(LEVEL, n-1) * sd(d) / sqrt(n),
says whether A is ahead of B at all: "separated" when the bound is above zero. Unlike a bound on each
candidate's own mean, this one gains from the pairing, and it is honest at 2-3 seeds because the t
quantile grows with few degrees of freedom (3.08 at 1 df, 1.89 at 2 df for 90%). With one seed no
bound is possible: one difference has no scatter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sweeper.results.effects import t_quantile

LEVEL = 0.90  # one-sided: at 2-3 seeds a 95% bound (t = 6.31 at 1 df) can separate almost nothing


@dataclass(frozen=True)
class Gap:
    """A's lead over B on the seeds both ran: positive means A is better (in the study's direction)."""

    mean: float  # mean paired difference, signed so that positive favours A
    bound: float | None  # one-sided LEVEL lower confidence bound of the mean; None with one seed
    seeds: int  # paired seeds
    df: int  # degrees of freedom of the bound: seeds - 1
    level: float = LEVEL

    @property
    def separated(self) -> bool:
        """A is ahead of B at this confidence."""
        return self.bound is not None and self.bound > 0


def gap(a: dict[int, float], b: dict[int, float], direction: str, level: float = LEVEL) -> Gap:
    """A's paired lead over B: the values of each by seed, compared on the seeds both have.

    Raises:
        ValueError: the two share no seed, so nothing pairs.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} vs {sorted(b)}")
    sign = 1.0 if direction == "maximize" else -1.0
    d = [sign * (a[s] - b[s]) for s in seeds]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return Gap(mean, None, n, 0, level)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return Gap(mean, mean - t_quantile(level, n - 1) * sd / math.sqrt(n), n, n - 1, level)


def amount(x: float, metric: str, signed: bool = False) -> str:
    """A difference in the metric's units: accuracy in percentage points, anything else as is."""
    sign = "+" if signed else ""
    if metric.endswith("acc"):
        return f"{100 * x:{sign}.2f} points"
    return f"{x:{sign}.4f}"


def verdict(g: Gap, metric: str) -> str:
    """How sure the lead is, in words: "90% lower bound -0.31 points (one-sided paired t, 2 df): not
    separated"."""
    if g.bound is None:
        return "one paired seed: no bound is possible (re-run with --seeds 2 or more to say how sure)"
    state = "separated" if g.separated else "not separated"
    return (
        f"{g.level:.0%} lower bound {amount(g.bound, metric, signed=True)} (one-sided paired t over "
        f"{g.seeds} seeds, {g.df} df): {state}"
    )
