"""What a study optimizes: one metric, or a trade-off of accuracy against size or speed.

A study file says either ``objective: {metric: val_acc}`` or, to trade accuracy against cost,
``objectives: [{metric: val_acc, direction: maximize}, {metric: latency_ms, direction: minimize}]``.
The first objective is always the training metric (the one each trial picks its best epoch on); the
others are costs measured before training (:mod:`sweeper.train.costs`). A multi-objective study has a Pareto
front rather than one best trial, and a rule such as ``"val_acc>=0.88,min:latency_ms"`` picks from it.

Optuna does not prune multi-objective trials (``Trial.report`` accepts one objective), so such a
study runs every trial to its end; a parameter budget (``constraints.max_params``) is how to keep
large models from training at all.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweeper.errors import SweeperError, did_you_mean
from sweeper.study.checks import Fail

METRICS = ("val_acc", "val_loss")  # what training reports every epoch; the first objective
COSTS = ("num_params", "latency_ms", "gmacs")  # measured before training; the other objectives
COST_UNITS = {"num_params": "parameters", "latency_ms": "ms per image (batch 1)", "gmacs": "GMACs per image"}
MEASURED = "costs"  # trial user attribute: every cost measured for the trial (a dict)

if TYPE_CHECKING:  # the CLI starts without importing optuna; study files are parsed before any sweep
    from optuna.trial import FrozenTrial


def parse(raw: dict[str, Any], fail: Fail) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """The training metric, its direction and the cost objectives, from ``objective`` or ``objectives``."""
    if "objective" in raw and "objectives" in raw:
        raise fail("objectives", "a study has either objective (one metric) or objectives (a list), not both")
    if "objectives" not in raw:
        metric, direction = _one(raw.get("objective", {}) or {}, "objective", METRICS, fail)
        return metric, direction, ()
    items = raw["objectives"]
    if not isinstance(items, list) or not items:
        raise fail(
            "objectives",
            "must be a list such as [{metric: val_acc, direction: maximize}, {metric: latency_ms, "
            f"direction: minimize}}], got {items!r}",
        )
    metric, direction = _one(items[0], "objectives[0]", METRICS, fail, first=True)
    costs: list[tuple[str, str]] = []
    for i, item in enumerate(items[1:], start=1):
        cost = _one(item, f"objectives[{i}]", COSTS, fail)
        if cost[0] in [c for c, _ in costs]:
            raise fail(f"objectives[{i}].metric", f"{cost[0]} is already an objective; list each metric once")
        costs.append(cost)
    return metric, direction, tuple(costs)


def _one(item: object, key: str, allowed: Sequence[str], fail: Fail, first: bool = False) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise fail(key, f"must be a mapping {{metric: {allowed[0]}, direction: ...}}, got {item!r}")
    for k in item:
        if k not in ("metric", "direction"):
            raise fail(f"{key}.{k}", f"unknown key{did_you_mean(str(k), ['metric', 'direction'])}")
    metric = item.get("metric", "val_acc" if allowed is METRICS else None)
    if metric not in allowed:
        where = (
            " (the first objective is the metric training picks its best epoch on; costs come after it)"
            if first and metric in COSTS
            else ""
        )
        hint = did_you_mean(metric, allowed) if isinstance(metric, str) else ""
        raise fail(f"{key}.metric", f"must be one of {', '.join(allowed)}, got {metric!r}{hint}{where}")
    direction = item.get("direction", "maximize" if metric == "val_acc" else "minimize")
    if direction not in ("maximize", "minimize"):
        raise fail(f"{key}.direction", f"must be maximize or minimize, got {direction!r}")
    return str(metric), str(direction)


def check_multi(raw: dict[str, Any], sampler: str, fail: Fail) -> None:
    """What a multi-objective study cannot have: a pruner, a design, a single-objective sampler."""
    pruner = raw.get("pruner")
    name = pruner.get("name") if isinstance(pruner, dict) else pruner
    if name not in (None, "none"):
        raise fail(
            "pruner",
            f"Optuna does not prune multi-objective studies (Trial.report takes one objective), so {name} "
            "would never stop a trial: set pruner: none, and add constraints.max_params (a parameter "
            "budget checked before training) to keep models too large from training at all",
        )
    if raw.get("design") is not None:
        raise fail("design", "a design measures effects on one metric; use objective, not objectives")
    if sampler == "cmaes":
        raise fail("sampler.name", "cmaes optimizes one objective; use tpe, nsga2, gp, random or grid")


# ---- the Pareto front -------------------------------------------------------------------------------


def values(t: FrozenTrial, names: Sequence[str]) -> dict[str, float]:
    """A trial's objective values by name, plus every cost measured for it."""
    out = {k: float(v) for k, v in (t.user_attrs.get(MEASURED) or {}).items() if k in COSTS}
    if "num_params" not in out and t.user_attrs.get("num_params") is not None:  # counted on every trial
        out["num_params"] = float(t.user_attrs["num_params"])
    for name, v in zip(names, t.values or [], strict=False):
        out[name] = float(v)
    return out


def front(trials: Sequence[FrozenTrial], objectives: Sequence[tuple[str, str]]) -> list[FrozenTrial]:
    """The trials no other trial beats on every objective (ties kept), in trial order.

    Only complete, feasible trials with finite values take part (a diverged trial is infeasible).
    """
    signs = [1.0 if d == "minimize" else -1.0 for _, d in objectives]
    done = [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.values is not None
        and len(t.values) == len(signs)
        and all(math.isfinite(v) for v in t.values)
        and all(c <= 0 for c in t.constraints.values())
    ]
    keyed = [(t, [s * v for s, v in zip(signs, t.values, strict=True)]) for t in done]

    def dominated(a: list[float]) -> bool:
        return any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for _, b in keyed)

    return sorted((t for t, k in keyed if not dominated(k)), key=lambda t: t.number)


# ---- picking one trial by a rule ----------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}
_FILTER = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|>|<)\s*([-+0-9.eE]+)\s*$")
_ORDER = re.compile(r"^\s*(min|max)\s*:\s*([a-z_]+)\s*$")


@dataclass(frozen=True)
class Rule:
    """``--pick``: filters (``val_acc>=0.88``) that a trial must pass, then orders (``min:latency_ms``)."""

    text: str
    filters: tuple[tuple[str, str, float], ...]
    orders: tuple[tuple[str, str], ...]


def parse_rule(text: str, known: Sequence[str]) -> Rule:
    """Parse ``--pick``; every term names a metric in ``known`` (the objectives and measured costs)."""
    filters, orders = [], []
    for term in [t for t in text.split(",") if t.strip()]:
        if m := _FILTER.match(term):
            name, op, number = m.group(1), m.group(2), m.group(3)
            try:
                filters.append((name, op, float(number)))
            except ValueError:
                raise SweeperError(
                    f"--pick {text!r}: {number!r} in {term.strip()!r} is not a number"
                ) from None
        elif m := _ORDER.match(term):
            orders.append((m.group(2), m.group(1)))
            name = m.group(2)
        else:
            raise SweeperError(
                f"--pick {text!r}: cannot read {term.strip()!r}; terms are METRIC>=NUMBER (or <=, >, <, ==) "
                "and min:METRIC or max:METRIC, separated by commas, e.g. 'val_acc>=0.88,min:latency_ms'"
            )
        if name not in known:
            raise SweeperError(
                f"--pick {text!r}: unknown metric {name!r}{did_you_mean(name, known)}; "
                f"this study has {', '.join(known)}"
            )
    if not orders:
        raise SweeperError(
            f"--pick {text!r}: say which trial wins among those that pass, with min:METRIC or max:METRIC "
            "(e.g. 'val_acc>=0.88,min:latency_ms')"
        )
    return Rule(text, tuple(filters), tuple(orders))


def pick(
    candidates: Sequence[FrozenTrial], rule: Rule, objectives: Sequence[tuple[str, str]]
) -> tuple[FrozenTrial | None, str]:
    """The candidate the rule chooses, and why in words (or None and why none passed).

    Ties on the rule's orders (trials of one architecture share ``num_params`` and ``gmacs``) go to the
    better trial on the study's objectives, metric first, then to the earlier trial.
    """
    names = [m for m, _ in objectives]
    scored = [(t, values(t, names)) for t in candidates]
    passing = [
        (t, v)
        for t, v in scored
        if all(k in v and _OPS[op](v[k], limit) for k, op, limit in rule.filters)
        and all(k in v for k, _ in rule.orders)
    ]
    if not passing:
        return None, _none_passed(scored, rule)

    def key(item: tuple[FrozenTrial, dict[str, float]]) -> tuple[float, ...]:
        v = item[1]
        ordered = (v[k] if how == "min" else -v[k] for k, how in rule.orders)
        better = (v.get(m, math.inf) if d == "minimize" else -v.get(m, -math.inf) for m, d in objectives)
        return (*ordered, *better, float(item[0].number))

    chosen, v = min(passing, key=key)
    shown = ", ".join(f"{k}={fmt(v[k])}" for k in dict.fromkeys([*names, *(k for k, _ in rule.orders)]))
    return (
        chosen,
        f"picked by {rule.text!r} from {len(candidates)} candidates ({len(passing)} passed): {shown}",
    )


def _none_passed(scored: list[tuple[FrozenTrial, dict[str, float]]], rule: Rule) -> str:
    notes = []
    for k, op, limit in rule.filters:
        have = [v[k] for _, v in scored if k in v]
        if have:
            near = max(have) if op in (">=", ">") else min(have) if op in ("<=", "<") else None
            seen = (
                f"the candidates' best: {fmt(near)}"
                if near is not None
                else f"{len(have)} values, none equal"
            )
            notes.append(f"{k}{op}{limit:g} ({seen})")
    detail = "; ".join(notes) or "the metrics it names were not measured"
    return f"no candidate of {len(scored)} passes {rule.text!r}: {detail}"


def fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
