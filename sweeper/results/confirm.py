"""Seed-robust winners: re-run the top configurations with paired seeds, rank them by a lower bound.

The best of 40 trials is partly the luckiest seed. ``sweeper confirm STUDY --top K --seeds S`` queues
each of the K best configurations (distinct params, the seed aside) S more times, with the same S new
seeds for every configuration (paired: seed-to-seed luck is shared), as trials of the same study tagged
with the trial they re-run (user attribute ``sweeper:confirm``). They run through the normal sweep loop,
so an interrupted confirmation resumes. The configurations are then ranked by a one-sided 95% lower
confidence bound of their mean over the re-runs (the pooled scatter of the re-runs, t-based; the
original trial's own value is left out: it was selected for being high). ``refit-best`` refits the
confirmed winner once a confirmation has run.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import SweeperError
from sweeper.results.effects import t_quantile
from sweeper.store import record
from sweeper.study.design import CONFIRM, SEED_DIM
from sweeper.study.spec import Study

FIRST_SEED = 1000  # confirmation seeds are 1000, 1001, ...: none of them trained the sweep's trials
LEVEL = 0.95  # one-sided coverage of the bound


@dataclass(frozen=True)
class Ranked:
    """One confirmed configuration: the trial it re-ran, its re-runs' mean and the bound it is ranked by."""

    trial: int
    original: float  # the original trial's value
    runs: int  # complete re-runs
    mean: float | None
    bound: float | None  # lower (maximize) or upper (minimize) LEVEL confidence bound of the mean


def spec_for(spec: Study) -> Study:
    """The study as confirmation runs it: every param fixed by the queued trial, the seed searched too."""
    if spec.multi:
        raise SweeperError(
            f"confirm re-runs the best by one metric, and {spec.name!r} trades off several objectives: "
            "choose from its Pareto front with `sweeper refit-best --pick RULE` (re-runs would only join "
            "the front)"
        )
    if "seed" in spec.space and spec.space["seed"].kind != "int":
        raise SweeperError("confirm needs the seed as an integer dimension (or fixed); this study's is not")
    return dataclasses.replace(spec, design=None, space={**spec.space, "seed": SEED_DIM})


def candidates(study: optuna.Study, direction: str, top: int) -> list[FrozenTrial]:
    """The ``top`` best complete trials of the sweep with distinct configurations (seed aside)."""
    ranked = [t for t in record.top_trials(study, 10**9, direction) if CONFIRM not in t.user_attrs]
    out: list[FrozenTrial] = []
    seen: set[tuple[Any, ...]] = set()
    for t in ranked:
        key = tuple(sorted((k, repr(v)) for k, v in t.params.items() if k != "seed"))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out[:top]


def enqueue(study: optuna.Study, direction: str, top: int, seeds: int) -> int:
    """Queue the re-runs (each once: a resumed confirmation skips those queued or run). Returns how many."""
    before = len(study.get_trials(deepcopy=False))
    for t in candidates(study, direction, top):
        for s in range(FIRST_SEED, FIRST_SEED + seeds):
            study.enqueue_trial({**t.params, "seed": s}, user_attrs={CONFIRM: t.number}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before


def origin(t: FrozenTrial, by_number: dict[int, FrozenTrial]) -> int | None:
    """The trial a confirmation run re-ran, also for a retry of a lost or interrupted one."""
    if CONFIRM in t.user_attrs:
        return int(t.user_attrs[CONFIRM])
    first = t.system_attrs.get("failed_trial")
    if first is not None and first in by_number and CONFIRM in by_number[first].user_attrs:
        return int(by_number[first].user_attrs[CONFIRM])
    return None


def ranking(study: optuna.Study, direction: str, n_val: int | None = None) -> list[Ranked]:
    """Confirmed configurations, best bound first; empty when no confirmation has run."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    values: dict[int, list[float]] = defaultdict(list)
    for t in trials:
        n = origin(t, by_number)
        if n is not None:
            values[n]  # noqa: B018 - a queued configuration is listed before any of its runs completes
            v = record.primary(t)
            if t.state == TrialState.COMPLETE and v is not None and record.feasible(t):
                values[n].append(v)
    sd, df = _pooled(list(values.values()))
    sign = 1 if direction == "maximize" else -1
    out = []
    for n, vs in values.items():
        mean = sum(vs) / len(vs) if vs else None
        bound = None
        if mean is not None:
            noise, d = (sd, df) if sd is not None else (_binomial(mean, n_val), math.inf)
            bound = (
                mean - sign * t_quantile(LEVEL, d) * noise / math.sqrt(len(vs)) if noise is not None else None
            )
        out.append(Ranked(n, float(record.primary(by_number[n]) or math.nan), len(vs), mean, bound))
    out.sort(key=lambda r: (r.bound is None, -sign * (r.bound if r.bound is not None else 0.0)))
    return out


def winner(study: optuna.Study, direction: str, n_val: int | None = None) -> Ranked | None:
    """The confirmed configuration with the best bound, or None when no confirmation has completed."""
    ranked = [r for r in ranking(study, direction, n_val) if r.bound is not None]
    return ranked[0] if ranked else None


def _pooled(groups: list[list[float]]) -> tuple[float | None, float]:
    """The pooled standard deviation of the groups' runs and its degrees of freedom."""
    ss = sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    return (math.sqrt(ss / df), df) if df >= 1 else (None, 0)


def _binomial(p: float, n_val: int | None) -> float | None:
    return math.sqrt(max(p * (1 - p), 0.0) / n_val) if n_val else None


def format_ranking(ranked: list[Ranked], metric: str, direction: str) -> list[str]:
    """The ranking as text lines, for ``sweeper confirm``."""
    kind = "lower" if direction == "maximize" else "upper"
    lines = [
        f"configurations re-run with paired seeds, ranked by the {kind} {LEVEL:.0%} confidence bound of "
        f"their mean {metric} (the original trial's value left out: it was picked for being high)",
        f"{'trial':>5}  {'original':>8}  {'runs':>4}  {'mean':>8}  {'bound':>8}",
    ]
    for r in ranked:
        mean = f"{r.mean:.4f}" if r.mean is not None else "-"
        bound = f"{r.bound:.4f}" if r.bound is not None else "-"
        lines.append(f"{r.trial:>5}  {r.original:>8.4f}  {r.runs:>4}  {mean:>8}  {bound:>8}")
    return lines
