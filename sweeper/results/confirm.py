"""Seed-robust winners: re-run the top configurations with paired seeds, and say how sure the winner is.

The best of 40 trials is partly the luckiest seed. ``sweeper confirm STUDY --top K --seeds S`` queues
each of the K best configurations (distinct params, the seed aside), and in a designed study also the
configuration its effects fit predicts best (:mod:`sweeper.results.predicted`), S more times with the
same S new seeds for every candidate (paired: seed k of A and seed k of B share that seed's luck), as
trials of the same study tagged with the trial they re-run (user attribute ``sweeper:confirm``;
:data:`PREDICTED` for a predicted configuration no trial ran). They run through the normal sweep loop,
so an interrupted confirmation resumes, but never under a pruner: a re-run trains all its epochs.

Every re-run is accounted for: one that failed or diverged is listed with its reason, and a candidate
wins only with all its re-runs complete. Candidates are ranked by their mean over the seeds they share
(the original trial's own value is left out: it was selected for being high), and the winner's lead over
the runner-up is a paired difference with a one-sided t bound (:mod:`sweeper.results.paired`).
``refit-best`` refits the confirmed winner once the confirmation is complete.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import SweeperError
from sweeper.results import paired, predicted
from sweeper.store import record
from sweeper.study.design import CONFIRM, SEED_DIM
from sweeper.study.spec import Study

FIRST_SEED = 1000  # confirmation seeds are 1000, 1001, ...: none of them trained the sweep's trials
PREDICTED = -1  # the ``sweeper:confirm`` value of re-runs of a predicted configuration that no trial ran

Key = tuple[tuple[str, str], ...]  # a configuration: its params without the seed


@dataclass(frozen=True)
class Planned:
    """One candidate to re-run: its params (seed aside), and the trial it re-runs (or PREDICTED)."""

    params: dict[str, Any]
    trial: int
    why: str  # "trial 4, the sweep's 1st" / "the effects fit's predicted best, never run"


@dataclass(frozen=True)
class Candidate:
    """One configuration's re-runs: their values by seed, and for every other seed why it has none."""

    trial: int  # the trial it re-runs, or PREDICTED
    original: float | None  # that trial's value (None for a predicted configuration)
    values: dict[int, float]  # seed -> value of each complete, feasible re-run
    missing: dict[int, str]  # seed -> "queued", "running", "failed: ...", "diverged: ...", "pruned: ..."
    refit_trial: int | None  # the trial refit-best replays: the one re-run, else the first complete re-run
    config: Key = ()  # the configuration (params without the seed)

    @property
    def label(self) -> str:
        return "fit's best" if self.trial == PREDICTED else f"trial {self.trial}"

    @property
    def complete(self) -> bool:
        return bool(self.values) and not self.missing

    def mean(self, seeds: Sequence[int] | None = None) -> float | None:
        vs = [v for s, v in self.values.items() if seeds is None or s in seeds]
        return sum(vs) / len(vs) if vs else None


@dataclass(frozen=True)
class Confirmation:
    """The candidates, ranked, and the winner with how sure its lead over the runner-up is."""

    ranked: tuple[Candidate, ...]  # complete candidates best first (mean over `seeds`), then the others
    seeds: tuple[int, ...]  # the seeds every complete candidate ran: their means compare paired
    winner: Candidate | None  # None while a re-run is queued or running, or no candidate is complete
    gaps: dict[Key, paired.Gap] = field(default_factory=dict)  # the winner's lead over each complete other
    pending: int = 0  # re-runs queued or running

    @property
    def runner_up(self) -> Candidate | None:
        done = [c for c in self.ranked if c.complete]
        return done[1] if self.winner is not None and len(done) > 1 else None


def spec_for(spec: Study) -> Study:
    """The study as confirmation runs it: every param fixed by the queued trial, the seed searched too,
    and no pruner (a re-run trains every epoch: a pruner would drop some seeds of a candidate and not
    others, and the paired comparison would lose them)."""
    if spec.multi:
        raise SweeperError(
            f"confirm re-runs the best by one metric, and {spec.name!r} trades off several objectives: "
            "choose from its Pareto front with `sweeper refit-best --pick RULE` (re-runs would only join "
            "the front)"
        )
    if "seed" in spec.space and spec.space["seed"].kind != "int":
        raise SweeperError("confirm needs the seed as an integer dimension (or fixed); this study's is not")
    space = {**spec.space, "seed": SEED_DIM}
    return dataclasses.replace(spec, design=None, space=space, pruner={"name": "none"})


def config_key(params: dict[str, Any]) -> Key:
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k != "seed"))


def candidates(study: optuna.Study, direction: str, top: int) -> list[FrozenTrial]:
    """The ``top`` best complete trials of the sweep with distinct configurations (seed aside)."""
    ranked = [t for t in record.top_trials(study, 10**9, direction) if CONFIRM not in t.user_attrs]
    out: list[FrozenTrial] = []
    seen: set[Key] = set()
    for t in ranked:
        if config_key(t.params) not in seen:
            seen.add(config_key(t.params))
            out.append(t)
    return out[:top]


def sweep_best(study: optuna.Study, direction: str) -> FrozenTrial | None:
    """The best trial of the sweep itself: re-runs left out (the best of a candidate's seeds is the same
    lucky pick confirmation is there to undo); None without a complete trial."""
    try:
        found = candidates(study, direction, 1)
    except SweeperError:
        return None
    return found[0] if found else None


def plan(study: optuna.Study, spec: Study, top: int) -> list[Planned]:
    """What to re-run: the ``top`` best configurations, and a designed study's predicted best (the design
    run of that configuration when one ran, else the prediction itself)."""
    chosen = candidates(study, spec.direction, top)
    out = [
        Planned(dict(t.params), t.number, f"trial {t.number}, the sweep's #{i}")
        for i, t in enumerate(chosen, 1)
    ]
    if spec.design is None:
        return out
    guess = predicted.best(study.get_trials(deepcopy=False), spec.design, spec.space, spec.direction)
    if guess is None or any(config_key(p.params) == config_key(guess.params) for p in out):
        return out  # no prediction yet, or it is one of the best already
    why = f"the effects fit's predicted best ({spec.metric} {guess.value:.4f} predicted)"
    ran = [
        t
        for t in candidates(study, spec.direction, 10**9)
        if config_key(t.params) == config_key(guess.params)
    ]
    if ran:  # a design run of it: re-run that trial
        return [*out, Planned(dict(ran[0].params), ran[0].number, f"trial {ran[0].number}, {why}")]
    return [*out, Planned(guess.params, PREDICTED, f"{why}, never run")]


def enqueue(study: optuna.Study, planned: Sequence[Planned], seeds: int) -> int:
    """Queue the re-runs (each once: a resumed confirmation skips those queued or run). Returns how many."""
    before = len(study.get_trials(deepcopy=False))
    for p in planned:
        for s in range(FIRST_SEED, FIRST_SEED + seeds):
            study.enqueue_trial({**p.params, "seed": s}, user_attrs={CONFIRM: p.trial}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False)) - before


def origin(t: FrozenTrial, by_number: dict[int, FrozenTrial]) -> int | None:
    """The trial a confirmation run re-ran (PREDICTED for a prediction), also for a retry of a lost or
    interrupted one."""
    if CONFIRM in t.user_attrs:
        return int(t.user_attrs[CONFIRM])
    first = t.system_attrs.get("failed_trial")
    if first is not None and first in by_number and CONFIRM in by_number[first].user_attrs:
        return int(by_number[first].user_attrs[CONFIRM])
    return None


def gather(study: optuna.Study) -> tuple[list[Candidate], int]:
    """Every re-run candidate with its values and missing seeds, and how many re-runs are queued or
    running; empty when no confirmation was queued."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    groups: dict[Key, list[FrozenTrial]] = defaultdict(list)
    for t in trials:
        if origin(t, by_number) is not None:
            groups[config_key(_params(t))].append(t)
    out = [_candidate(ts, by_number) for ts in groups.values()]
    pending = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for ts in groups.values() for t in ts)
    return out, pending


def _params(t: FrozenTrial) -> dict[str, Any]:
    """A re-run's params, also while it waits (Optuna keeps a queued trial's params apart)."""
    return dict(t.system_attrs.get("fixed_params") or t.params)


def _candidate(runs: list[FrozenTrial], by_number: dict[int, FrozenTrial]) -> Candidate:
    """One configuration's re-runs, seed by seed: a complete feasible run gives its value; else a run
    still to come says so; else the last run's ending is the reason the seed has no value."""
    n = max(o for t in runs if (o := origin(t, by_number)) is not None)  # a trial's number over PREDICTED
    by_seed: dict[int, list[FrozenTrial]] = defaultdict(list)
    for t in sorted(runs, key=lambda t: t.number):
        by_seed[int(_params(t)["seed"])].append(t)
    values: dict[int, float] = {}
    missing: dict[int, str] = {}
    for seed, ts in sorted(by_seed.items()):
        done = [t for t in ts if _valid(t)]
        if done:
            values[seed] = float(done[0].values[0])
        else:
            missing[seed] = _why_missing(ts)
    original = by_number.get(n)
    first = next((t.number for t in sorted(runs, key=lambda t: t.number) if _valid(t)), None)
    return Candidate(
        n,
        record.primary(original) if original is not None else None,
        values,
        missing,
        n if original is not None else first,
        config_key(_params(runs[0])),
    )


def _valid(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and record.primary(t) is not None and record.feasible(t)


def _why_missing(runs: list[FrozenTrial]) -> str:
    """Why a seed has no value: a run still to come, else how its last run ended."""
    if any(t.state == TrialState.RUNNING for t in runs):
        return "running"
    if any(t.state == TrialState.WAITING for t in runs):
        return "queued"
    last = runs[-1]
    reason = record.why(last) or "no reason recorded"
    if last.state == TrialState.COMPLETE:  # complete but infeasible: it diverged
        return reason if reason.startswith("diverged") else f"diverged: {reason}"
    return f"{'pruned' if last.state == TrialState.PRUNED else 'failed'}: {reason}"


def confirmation(study: optuna.Study, direction: str) -> Confirmation:
    """The confirmation as it stands: candidates ranked by their mean over the seeds every complete one
    ran, the winner (only once nothing is left to run) and its paired lead over every other complete
    candidate."""
    found, pending = gather(study)
    done = [c for c in found if c.complete]
    shared = sorted(set.intersection(*(set(c.values) for c in done))) if done else []
    sign = 1.0 if direction == "maximize" else -1.0
    done.sort(key=lambda c: -sign * (c.mean(shared or None) or 0.0))
    rest = sorted((c for c in found if not c.complete), key=lambda c: c.trial)
    winner = done[0] if done and not pending else None
    gaps = {}
    if winner is not None:  # complete candidates share at least the confirmation's first seeds
        gaps = {c.config: paired.gap(winner.values, c.values, direction) for c in done[1:]}
    return Confirmation(tuple(done + rest), tuple(shared), winner, gaps, pending)


def headline(conf: Confirmation, metric: str) -> str | None:
    """The confirmation's answer in one line; None when no confirmation was queued."""
    if not conf.ranked:
        return None
    if conf.pending:
        return (
            f"confirmation unfinished: {conf.pending} re-run{'s' if conf.pending != 1 else ''} queued or "
            "running, no winner until they end (`sweeper confirm` with the same options finishes it)"
        )
    w = conf.winner
    if w is None:
        return "no confirmed winner: no candidate has all its re-runs complete (the reasons are listed)"
    n = len(conf.seeds)
    head = (
        f"confirmed winner: {w.label} ({metric} {w.mean(conf.seeds):.4f}, mean of {n} re-run{'s' * (n != 1)})"
    )
    r = conf.runner_up
    if r is None:
        return f"{head}, the only candidate with all its re-runs complete: no runner-up to compare with"
    g = conf.gaps[r.config]
    lead = paired.amount(g.mean, metric)
    return f"{head}, ahead of the runner-up ({r.label}) by {lead}; {paired.verdict(g, metric)}"


def format_table(conf: Confirmation, metric: str) -> list[str]:
    """The candidates as text lines, for ``sweeper confirm`` and ``sweeper show``: each one's re-runs,
    mean, the winner's paired lead over it with its bound, and why any seed has no value (the headline
    is apart: :func:`headline`)."""
    seeds = sorted({s for c in conf.ranked for s in (*c.values, *c.missing)})
    span = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0]) if seeds else "none"
    lines = [
        f"re-runs with paired seeds {span}, never pruned; mean {metric} over the seeds every complete "
        "candidate ran (the original trial's value is left out: it was picked for being high); "
        f"'ahead by' is the winner's paired lead, with its one-sided {paired.LEVEL:.0%} lower bound",
        f"{'candidate':<12}  {'original':>8}  {'re-runs':>7}  {'mean':>8}  {'ahead by':>8}  "
        f"{'bound':>8}  missing",
    ]
    for c in conf.ranked:
        g = conf.gaps.get(c.config)
        mean = c.mean(conf.seeds or None) if c.complete else c.mean()
        cells = [
            f"{c.label:<12}",
            f"{c.original:>8.4f}" if c.original is not None else f"{'-':>8}",
            f"{len(c.values)}/{len(c.values) + len(c.missing)}".rjust(7),
            f"{mean:>8.4f}" if mean is not None else f"{'-':>8}",
            f"{'winner':>8}" if c is conf.winner else f"{g.mean:>+8.4f}" if g else f"{'-':>8}",
            f"{g.bound:>+8.4f}" if g is not None and g.bound is not None else f"{'-':>8}",
            "; ".join(f"seed {s} {why}" for s, why in sorted(c.missing.items())),
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def view(conf: Confirmation, metric: str) -> dict[str, Any] | None:
    """The confirmation as plain data for ``show --json`` and the report; None when none was queued."""
    said = headline(conf, metric)
    if said is None:
        return None
    w, r = conf.winner, conf.runner_up
    lead = conf.gaps.get(r.config) if r is not None else None
    return {
        "headline": said,
        "winner": None if w is None else _candidate_view(w, conf),
        "runner_up": None if r is None else _candidate_view(r, conf),
        "lead": None if lead is None else {**dataclasses.asdict(lead), "separated": lead.separated},
        "pending": conf.pending,
        "candidates": [_candidate_view(c, conf) for c in conf.ranked],
        "table": format_table(conf, metric),
    }


def _candidate_view(c: Candidate, conf: Confirmation) -> dict[str, Any]:
    return {
        "label": c.label,
        "trial": None if c.trial == PREDICTED else c.trial,
        "refit_trial": c.refit_trial,
        "original": c.original,
        "mean": c.mean(conf.seeds or None) if c.complete else c.mean(),
        "values": {str(s): v for s, v in c.values.items()},
        "missing": {str(s): why for s, why in c.missing.items()},
    }
