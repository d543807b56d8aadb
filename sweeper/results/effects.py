"""The effects of a designed study's toggles, fitted jointly, with verdicts that hold a stated error rate.

The model (:mod:`sweeper.study.terms`): an intercept, the blocks (the runs of one seed each), every
designed dimension's main effect, and with ``--interactions`` the two-way interactions of the two-level
dimensions. One least-squares fit; only the terms the runs can estimate are reported, the others are
named as aliased. Because the design is balanced, each effect is estimated with the others held level,
which a difference of marginal means over an adaptive sampler's trials is not.

The noise is the residual standard deviation, its degrees of freedom split in two: pure replicate error
(runs of the same settings with another seed) and lack of fit (what the model leaves out, such as the
two-way interactions of a resolution IV design: they can only inflate sigma, so the intervals err wide).
With no residual df, the validation set's binomial SE stands in; it leaves seed noise out, and the
summary says the intervals are then too narrow.

A verdict holds its error rate across the table, not per row: each term's two-sided t test p-value is
adjusted across the family (every term in the table) by Holm (familywise error) or Benjamini-Hochberg
(false discovery rate; ``design.multiplicity``). ``helps``/``hurts``: adjusted p < 1 - LEVEL;
``negligible``: the LEVEL interval lies within +-``effect`` (the effect the study asks about); ``cannot
resolve`` otherwise. The intervals are per term (LEVEL t intervals, not adjusted).

Every run is scored on the same validation images, so the effects are those on this validation set,
conditional on it: a toggle that happens to suit these particular images is a real effect here, and how
another draw of images would move an effect is not in its interval. Only a larger validation set
(``data.val_from_train``) shrinks that part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from sweeper.results import multiplicity
from sweeper.store.record import borrowed, feasible, why
from sweeper.study import planning, terms
from sweeper.study.design import CONFIRM, Design, runs
from sweeper.study.dims import Dim
from sweeper.study.planning import LEVEL, POWER, detectable, t_quantile

__all__ = ["LEVEL", "POWER", "Effect", "Fit", "fit", "t_quantile", "verdict"]

Verdict = Literal["helps", "hurts", "negligible", "cannot resolve"]
Source = Literal["lack of fit", "residual", "replicates", "binomial", "none"]


@dataclass(frozen=True)
class Effect:
    """One term: a toggle (on - off), a level of a choice (vs its first level) or an interaction."""

    term: str
    estimate: float  # in objective units
    se: float
    low: float  # LEVEL t interval, per term
    high: float
    p: float  # two-sided t test, unadjusted
    p_adjusted: float  # across the table's family (Holm or Benjamini-Hochberg)
    verdict: Verdict


@dataclass(frozen=True)
class Missing:
    """A design run the fit has no result for, and why."""

    label: str  # "repeat 0, row 5"
    state: str  # failed, pruned, diverged, running, queued, not run
    why: str


@dataclass(frozen=True)
class Runs:
    """The design's runs as the study holds them: the usable ones and what became of the others."""

    used: tuple[FrozenTrial, ...]
    planned: int
    blocks: tuple[tuple[int, int, int], ...]  # per block: (seed, runs used, runs planned)
    missing: tuple[Missing, ...]
    outside: int  # complete trials off the design (sampled, not queued by it; not confirm re-runs)


@dataclass(frozen=True)
class Noise:
    """Where the intervals' sigma comes from.

    ``lack of fit``: the scatter of the settings around the fitted model, beyond the scatter of runs of
    one setting; the runs of a setting share the validation set (and how it happens to suit that
    setting), so this is the error an effect's estimate has. ``residual``: all residual df are lack of fit
    (no run repeats another's settings). ``replicates``: the model fits every setting, only the
    replicate scatter is left (it leaves the validation set's share out). ``binomial``: no residual df;
    the validation set's binomial SE stands in (seed noise left out). ``none``: no intervals.
    """

    residual_df: int  # runs - rank of the model
    pure_df: int  # of which replicate error (same settings, another seed); the rest is lack of fit
    chains: int  # of the lack of fit, the df in the two-way interactions' alias chains (interactions inflate)
    source: Source
    sigma: float | None  # of one run, as the intervals use it
    df: float  # its degrees of freedom (infinite for the binomial SE)
    sigma_pure: float | None  # the replicate scatter alone, when there is some


@dataclass(frozen=True)
class Fit:
    """The joint fit and the numbers a reader needs to judge it."""

    metric: str
    direction: str
    design: Runs
    noise: Noise
    effect: float  # the effect asked about (design.effect)
    multiplicity: multiplicity.Method
    effects: tuple[Effect, ...]
    aliased: tuple[str, ...]  # terms asked for that the runs cannot estimate
    aliasing: planning.Aliasing | None  # of the runs used
    detectable: float | None  # smallest effect the verdicts find with POWER, from sigma
    n_val: int | None  # validation images
    binomial_se: float | None  # of one run's accuracy, sqrt(p(1-p)/n_val)
    detectable_binomial: float | None  # the same from the binomial SE alone

    @property
    def runs(self) -> int:
        return len(self.design.used)

    @property
    def df(self) -> int:
        """Residual degrees of freedom of the fit."""
        return self.noise.residual_df

    @property
    def sigma(self) -> float | None:
        """One run's noise as the intervals use it (None when the binomial SE stands in)."""
        return None if self.noise.source in ("binomial", "none") else self.noise.sigma


# ---- which runs -----------------------------------------------------------------------------------


def _key(params: dict[str, Any], dims: Sequence[str]) -> tuple[str, ...]:
    return tuple(repr(params.get(d)) for d in (*dims, terms.BLOCK_KEY))


def usable(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and bool(t.values) and math.isfinite(t.values[0]) and feasible(t)


def design_runs(trials: Sequence[FrozenTrial], design: Design, space: dict[str, Dim]) -> Runs:
    """Match the study's trials to the design's runs by their params (a retried run is the same run)."""
    planned = runs(design, space)
    plan = {_key(p, design.dims) for _, p in planned}
    tried: dict[tuple[str, ...], list[FrozenTrial]] = {}
    outside = 0
    for t in trials:
        if CONFIRM in t.user_attrs or borrowed(t) or not all(d in t.params for d in design.dims):
            continue  # confirm's re-runs and a warm start's borrowed trials are not the design's
        k = _key(t.params, design.dims)
        if k in plan:
            tried.setdefault(k, []).append(t)
        elif t.state == TrialState.COMPLETE:
            outside += 1
    used: list[FrozenTrial] = []
    missing: list[Missing] = []
    per: dict[int, list[int]] = {seed: [0, 0] for seed in design.seeds()}
    for label, p in planned:
        ok = [t for t in tried.get(_key(p, design.dims), []) if usable(t)]
        per[p[terms.BLOCK_KEY]][1] += 1
        if ok:
            used.append(ok[0])
            per[p[terms.BLOCK_KEY]][0] += 1
        else:
            missing.append(_missing(label, tried.get(_key(p, design.dims), [])))
    blocks = tuple((seed, n[0], n[1]) for seed, n in per.items())
    return Runs(tuple(used), len(planned), blocks, tuple(missing), outside)


def _missing(label: str, tried: list[FrozenTrial]) -> Missing:
    if not tried:
        return Missing(label, "not run", "")
    t = tried[-1]
    if t.state == TrialState.COMPLETE:
        state = "diverged" if not feasible(t) else "no finite value"
    else:
        state = {"FAIL": "failed", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "queued"}[
            t.state.name
        ]
    return Missing(label, state, why(t))


# ---- the fit --------------------------------------------------------------------------------------


def fit(
    trials: Sequence[FrozenTrial],
    design: Design,
    space: dict[str, Dim],
    metric: str,
    direction: str,
    n_val: int | None = None,
    interactions: bool = False,
) -> Fit:
    """Fit every designed dimension's effect jointly, with the blocks, and judge them as one family.

    Args:
        n_val: validation images; gives the binomial SE of one run (val_acc only).
        interactions: add the two-way interactions of the two-level dimensions; only the estimable ones
            are fitted as effects, the others are named in ``aliased``.
    """
    r = design_runs(trials, design, space)
    params = [t.params for t in r.used]
    y = np.array([float(t.values[0]) for t in r.used])
    m = terms.build(params, space, design.dims, interactions)
    binom = _binomial_se(y, n_val) if metric == "val_acc" else None
    chains = (
        0 if interactions else terms.rank(terms.build(params, space, design.dims, True).x) - terms.rank(m.x)
    )
    noise = _noise(m, y, params, design.dims, binom, chains)
    found, aliased, unit = _effects(m, y, noise, design, direction)
    tests = max(len(found), 1)
    return Fit(
        metric,
        direction,
        r,
        noise,
        design.effect,
        design.multiplicity,
        found,
        aliased,
        planning.alias(params, space, design.dims) if params else None,
        detectable(unit * noise.sigma, noise.df, tests)
        if noise.source not in ("binomial", "none") and noise.sigma and unit
        else None,
        n_val,
        binom,
        detectable(unit * binom, math.inf, tests) if binom is not None and unit else None,
    )


def _noise(
    m: terms.Model,
    y: np.ndarray,
    params: list[dict[str, Any]],
    dims: Sequence[str],
    binom: float | None,
    chains: int,
) -> Noise:
    df = len(y) - terms.rank(m.x)
    if df < 1:
        if binom is not None and len(y):
            return Noise(0, 0, 0, "binomial", binom, math.inf, None)
        return Noise(max(df, 0), 0, 0, "none", None, math.inf, None)
    rss = _rss(m.x, y)
    reps = terms.replicates(params, dims)
    pure = len(y) - terms.rank(reps)
    ss_pure = _rss(reps, y) if pure else 0.0
    sigma_pure = math.sqrt(ss_pure / pure) if pure else None
    lack = df - pure
    chains = min(chains, lack)
    if not pure:
        return Noise(df, 0, chains, "residual", math.sqrt(rss / df), df, None)
    if lack:
        sigma = math.sqrt(max(rss - ss_pure, 0.0) / lack)
        return Noise(df, pure, chains, "lack of fit", sigma, lack, sigma_pure)
    return Noise(df, pure, 0, "replicates", sigma_pure, pure, sigma_pure)


def _rss(x: np.ndarray, y: np.ndarray) -> float:
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    r = y - x @ beta
    return float(r @ r)


def _effects(
    m: terms.Model, y: np.ndarray, noise: Noise, design: Design, direction: str
) -> tuple[tuple[Effect, ...], tuple[str, ...], float]:
    """The estimable terms' effects with adjusted verdicts, the aliased terms' names, and the largest
    main-effect SE per unit of sigma (0 when none)."""
    if noise.sigma is None or not len(y):
        return (), (), 0.0
    ok = terms.estimable(m.x)
    beta, *_ = np.linalg.lstsq(m.x, y, rcond=None)
    cov = np.linalg.pinv(m.x.T @ m.x)
    rows = []
    for i, term in enumerate(m.terms):
        c = m.column(i)
        if ok[c]:
            unit = term.scale * math.sqrt(max(float(cov[c, c]), 0.0))
            rows.append((term, term.scale * float(beta[c]), unit))
    aliased = tuple(t.name for i, t in enumerate(m.terms) if not ok[m.column(i)])
    tq = t_quantile(1 - (1 - LEVEL) / 2, noise.df)
    p = [_p_value(est / (unit * noise.sigma), noise.df) for _, est, unit in rows]
    adjusted = multiplicity.adjust(p, design.multiplicity)
    sign = 1 if direction == "maximize" else -1
    out = []
    for (term, est, unit), pi, adj in zip(rows, p, adjusted, strict=True):
        se = unit * noise.sigma
        lo, hi = est - tq * se, est + tq * se
        good = (lo, hi) if sign > 0 else (-hi, -lo)  # signed so that positive is better
        out.append(Effect(term.name, est, se, lo, hi, pi, adj, verdict(*good, design.effect, adj)))
    out.sort(key=lambda e: -sign * e.estimate)
    mains = [unit for term, _, unit in rows if term.kind == "main"]
    return tuple(out), aliased, max(mains, default=0.0)


def _p_value(t: float, df: float) -> float:
    from scipy import special

    return float(2 * (special.ndtr(-abs(t)) if math.isinf(df) else special.stdtr(df, -abs(t))))


def verdict(low: float, high: float, asked: float, p_adjusted: float) -> Verdict:
    """``low``/``high``: the interval, signed so that positive is better; ``p_adjusted``: across the table."""
    called = p_adjusted < 1 - LEVEL
    if called and low > 0:
        return "helps"
    if called and high < 0:
        return "hurts"
    if -asked < low and high < asked:
        return "negligible"
    return "cannot resolve"


def _binomial_se(y: np.ndarray, n_val: int | None) -> float | None:
    if not n_val or not len(y):
        return None
    p = float(np.clip(np.mean(y), 0.0, 1.0))
    return math.sqrt(max(p * (1 - p), 1.0 / n_val) / n_val)


def binomial_se(p: float, n_val: int) -> float:
    """The standard error of an accuracy ``p`` measured on ``n_val`` images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n_val) if n_val else float("nan")
