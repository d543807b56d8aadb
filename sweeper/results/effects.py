"""The effects of a designed study's toggles, fitted jointly, with intervals and what the study can resolve.

One least-squares fit of the objective on every designed dimension at once: a two-level dimension is
coded -1/+1 (its effect is the difference on - off, twice its coefficient), a choice of k levels is
k-1 indicator columns (each level against the first); two-way interactions of two-level dimensions are
optional. The repeats (paired seeds) are the noise: the residual standard deviation gives t-based
intervals. Because the design is balanced, each effect is estimated with the others held level, which a
difference of marginal means over an adaptive sampler's trials is not.

A verdict says what the interval allows: ``helps`` or ``hurts`` when it excludes zero; ``negligible`` when
it lies within +-``effect`` (the effect the study asks about, ``design.effect``); ``cannot resolve``
otherwise: the interval includes zero and is wider than the effect asked about.

The smallest detectable effect (80% power, 5% two-sided) is reported twice: from the runs' own scatter,
and from the validation set alone, whose accuracy has a binomial standard error sqrt(p(1-p)/n_val) per run
that no number of epochs removes: only more validation images or more runs do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from sweeper.store.record import NOT_COUNTED
from sweeper.study.design import CONFIRM, Design, levels
from sweeper.study.dims import Dim

Verdict = Literal["helps", "hurts", "negligible", "cannot resolve"]
LEVEL = 0.95  # interval coverage
POWER = 0.80  # for the smallest detectable effect


@dataclass(frozen=True)
class Effect:
    """One term: a toggle (on - off), a level of a choice (vs its first level) or an interaction."""

    term: str
    estimate: float  # in objective units
    se: float
    low: float
    high: float
    verdict: Verdict


@dataclass(frozen=True)
class Fit:
    """The joint fit and the numbers a reader needs to judge it."""

    metric: str
    direction: str
    runs: int  # trials in the fit
    left_out: int  # design trials that failed or did not finish
    df: int  # residual degrees of freedom
    sigma: float | None  # residual standard deviation of one run
    effect: float  # the effect asked about (design.effect)
    effects: tuple[Effect, ...]
    detectable: float | None  # smallest detectable toggle effect from sigma
    n_val: int | None  # validation images
    binomial_se: float | None  # of one run's accuracy, sqrt(p(1-p)/n_val)
    detectable_binomial: float | None  # the same from the binomial SE alone: the floor of this design


def design_trials(trials: Sequence[FrozenTrial], dims: Sequence[str]) -> tuple[list[FrozenTrial], int]:
    """Complete, feasible design runs (not confirm re-runs), and how many design runs were left out."""
    ours = [t for t in trials if CONFIRM not in t.user_attrs and all(d in t.params for d in dims)]
    done = [
        t
        for t in ours
        if t.state == TrialState.COMPLETE
        and t.values
        and math.isfinite(t.values[0])
        and all(c <= 0 for c in t.constraints.values())
    ]
    gone = sum(
        t.state in (TrialState.FAIL, TrialState.PRUNED) and NOT_COUNTED not in t.user_attrs for t in ours
    )
    return done, gone


def columns(
    params: Sequence[dict[str, Any]], space: dict[str, Dim], dims: Sequence[str], interactions: bool
) -> tuple[np.ndarray, list[str], list[float]]:
    """The model matrix (intercept first), and each later column's name and effect scale: 2 for a -1/+1
    column (on - off is twice the coefficient), 1 for a level's indicator column."""
    cols: list[np.ndarray] = [np.ones(len(params))]
    names: list[str] = []
    scales: list[float] = []
    two: list[tuple[str, np.ndarray]] = []
    for d in dims:
        lv = levels(space[d])
        if len(lv) == 2:
            x = np.array([1.0 if p[d] == lv[1] else -1.0 for p in params])
            name = d if space[d].kind == "bool" else f"{d}={lv[1]} vs {lv[0]}"
            cols.append(x)
            names.append(name)
            scales.append(2.0)
            two.append((name, x))
            continue
        for level in lv[1:]:
            cols.append(np.array([1.0 if p[d] == level else 0.0 for p in params]))
            names.append(f"{d}={level} vs {lv[0]}")
            scales.append(1.0)
    if interactions:
        for i, (a, x) in enumerate(two):
            for b, z in two[i + 1 :]:
                cols.append(x * z)
                names.append(f"{a} x {b}")
                scales.append(2.0)
    return np.stack(cols, axis=1), names, scales


def t_quantile(q: float, df: float) -> float:
    """The q quantile of Student's t with ``df`` degrees of freedom (the normal's for infinite df)."""
    from scipy import special  # a dependency of scikit-learn; lighter to import than scipy.stats

    return float(special.ndtri(q) if math.isinf(df) else special.stdtrit(df, q))


def fit(
    trials: Sequence[FrozenTrial],
    design: Design,
    space: dict[str, Dim],
    metric: str,
    direction: str,
    n_val: int | None = None,
    interactions: bool = False,
) -> Fit:
    """Fit every designed dimension's effect jointly by least squares, with ``LEVEL`` t intervals.

    Args:
        n_val: validation images; gives the binomial floor of the noise (val_acc only).
        interactions: add the two-way interactions of the two-level dimensions (needs enough runs).
    """
    used, gone = design_trials(trials, design.dims)
    y = np.array([float(t.values[0]) for t in used])
    x, names, scales = columns([t.params for t in used], space, design.dims, interactions)
    rank = np.linalg.matrix_rank(x) if len(used) else 0
    df = len(used) - rank
    binom = _binomial_se(y, n_val) if metric == "val_acc" else None
    if len(used) == 0 or df < 1 and binom is None:
        empty = Fit(
            metric, direction, len(used), gone, max(df, 0), None, design.effect, (), None, n_val, binom, None
        )
        return empty
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    sigma = float(np.sqrt(resid @ resid / df)) if df >= 1 else None
    noise, noise_df = (sigma, df) if sigma is not None else (binom, math.inf)
    assert noise is not None
    cov = noise**2 * np.linalg.pinv(x.T @ x)
    tq = t_quantile(1 - (1 - LEVEL) / 2, noise_df)
    sign = 1 if direction == "maximize" else -1
    out = []
    for i, (name, scale) in enumerate(zip(names, scales, strict=True), start=1):
        est, se = scale * float(beta[i]), scale * math.sqrt(max(float(cov[i, i]), 0.0))
        lo, hi = est - tq * se, est + tq * se
        out.append(Effect(name, est, se, lo, hi, verdict(sign * lo, sign * hi, design.effect)))
    out.sort(key=lambda e: -sign * e.estimate)
    runs = len(used)
    return Fit(
        metric,
        direction,
        runs,
        gone,
        df,
        sigma,
        design.effect,
        tuple(out),
        detectable(sigma, runs, df) if sigma is not None else None,
        n_val,
        binom,
        detectable(binom, runs, math.inf) if binom is not None and runs else None,
    )


def verdict(low: float, high: float, asked: float) -> Verdict:
    """``low``/``high``: the interval, signed so that positive is better."""
    if low > 0:
        return "helps"
    if high < 0:
        return "hurts"
    if -asked < low and high < asked:
        return "negligible"
    return "cannot resolve"


def detectable(sigma: float, runs: int, df: float) -> float:
    """The smallest on - off difference a balanced two-level design of ``runs`` runs detects with
    ``POWER`` at ``LEVEL``: (t_{1-a/2} + t_{power}) * 2 sigma / sqrt(runs)."""
    d = df if df >= 1 else math.inf
    return (t_quantile(1 - (1 - LEVEL) / 2, d) + t_quantile(POWER, d)) * 2 * sigma / math.sqrt(runs)


def _binomial_se(y: np.ndarray, n_val: int | None) -> float | None:
    if not n_val or not len(y):
        return None
    p = float(np.clip(np.mean(y), 0.0, 1.0))
    return math.sqrt(max(p * (1 - p), 1.0 / n_val) / n_val)


def binomial_se(p: float, n_val: int) -> float:
    """The standard error of an accuracy ``p`` measured on ``n_val`` images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n_val) if n_val else float("nan")


def summary(f: Fit) -> list[str]:
    """What the fit compared and what it can resolve, in sentences."""
    lines = [
        f"{f.metric} of {f.runs} design runs, all toggles fitted jointly (least squares, -1/+1 coding; "
        f"effect = on - off); {LEVEL:.0%} t intervals from the repeats' scatter ({f.df} residual df"
        + (f", sigma {f.sigma:.4f} per run)" if f.sigma is not None else ")")
        + (f"; left out: {f.left_out} failed or pruned" if f.left_out else "")
    ]
    if f.binomial_se is not None and f.n_val:
        lines.append(
            f"validation: {f.n_val} images, binomial SE {f.binomial_se:.4f} per run "
            f"({100 * f.binomial_se:.2f} points)"
        )
    found = [
        f"{x:.4f} from the runs' scatter" if (x := f.detectable) is not None else None,
        f"{x:.4f} from the validation size alone" if (x := f.detectable_binomial) is not None else None,
    ]
    if any(found):
        lines.append(
            f"smallest effect this study detects ({POWER:.0%} power): "
            + ", ".join(s for s in found if s)
            + f"; asked about: {f.effect:.4f}"
            + (
                " -- too small for this study: more runs or a larger validation set (data.val_from_train)"
                if (f.detectable or 0) > f.effect
                else ""
            )
        )
    return lines


def format_table(f: Fit) -> list[str]:
    """The fit as aligned text lines, for ``sweeper show --ablation``."""
    if not f.effects:
        return [*summary(f), "", "not enough complete design runs for a fit yet"]
    width = max(len("term"), *(len(e.term) for e in f.effects))
    head = f"{'term':<{width}}  {'effect':>8}  {'SE':>7}  {f'{LEVEL:.0%} interval':<20}  verdict"
    lines = [*summary(f), "", head]
    for e in f.effects:
        lines.append(
            f"{e.term:<{width}}  {e.estimate:>+8.4f}  {e.se:>7.4f}  "
            f"{f'[{e.low:+.4f}, {e.high:+.4f}]':<20}  {e.verdict}"
        )
    return lines
