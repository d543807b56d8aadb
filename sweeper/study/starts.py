"""Known-good starts: configurations a study tries first (``enqueue:``), and trials borrowed from another
study (``run-study --warm-start OTHER``) so that the sampler starts informed instead of blind.

Enqueued configurations are partial: the searched parameters they name are pinned, the others sampled.
They are queued once (a configuration already in the study is skipped, on resume and across workers).
Borrowed trials inform the sampler only: they are not counted towards ``--trials`` and never win.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sweeper.errors import SweeperError, did_you_mean
from sweeper.study.bases import flatten
from sweeper.study.checks import Fail, coerce
from sweeper.study.config import GROUPS, PARAM_TYPES
from sweeper.study.dims import Dim

if TYPE_CHECKING:  # optuna is imported where it is used: spec imports this module, and the CLI spec
    import optuna
    from optuna.distributions import BaseDistribution

ENQUEUED = "enqueued_from"  # trial user attr: where an enqueued configuration came from
WARM = "warm_start_from"  # trial user attr: the study (and trial) a borrowed trial comes from
WARM_LOG = "sweeper:warm_starts"  # study user attr: every warm start, with its trial count


def fits(dim: Dim, value: object) -> bool:
    """Whether ``value`` is one the dimension can take."""
    if dim.kind == "bool":
        return isinstance(value, bool)
    if dim.kind == "choice":
        return value in dim.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    assert dim.low is not None and dim.high is not None
    return dim.low <= value <= dim.high and (dim.kind != "int" or float(value).is_integer())


def parse_enqueue(
    raw: object,
    space: dict[str, Dim],
    fixed: dict[str, Any],
    fail: Fail,
    recipe_fixed: Callable[[str], dict[str, Any]],
) -> tuple[dict[str, Any], ...]:
    """``enqueue: [{lr_head: 0.001, aug.cutmix: true}, {recipe: recipe-004}]`` -> checked partial params.

    ``recipe_fixed(name)`` is another study's fixed values (the study loader, passed in by its caller).
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fail("enqueue", f"must be a list of configurations, got {raw!r}")
    out = []
    for i, entry in enumerate(raw):
        where = f"enqueue[{i}]"
        if isinstance(entry, dict) and set(entry) == {"recipe"}:
            entry = _from_study(entry["recipe"], space, fail, where, recipe_fixed)
        if not isinstance(entry, dict) or not entry:
            raise fail(where, "must be a mapping of searched parameter: value, or {recipe: STUDY}")
        params = {}
        for key, value in flatten(entry, GROUPS).items():
            if key not in space:
                why = "it is fixed" if key in fixed else f"searched are {', '.join(space) or 'none'}"
                raise fail(
                    f"{where}.{key}", f"is not searched by this study ({why}){did_you_mean(key, space)}"
                )
            try:
                value = coerce(key, value) if key in PARAM_TYPES else value  # a cell's name: fits checks it
            except ValueError as e:
                raise fail(f"{where}.{key}", str(e)) from None
            if not fits(space[key], value):
                raise fail(f"{where}.{key}", f"{value!r} is outside the searched dimension")
            params[key] = value
        out.append(params)
    return tuple(out)


def _from_study(
    name: object, space: dict[str, Dim], fail: Fail, where: str, recipe_fixed: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """The values another study (a recipe) fixes for the parameters this one searches."""
    if not isinstance(name, str):
        raise fail(f"{where}.recipe", f"must be a study name, got {name!r}")
    try:
        other = recipe_fixed(name)
    except SweeperError as e:
        raise fail(f"{where}.recipe", str(e)) from None
    found = {k: v for k, v in other.items() if k in space and fits(space[k], v)}
    if not found:
        raise fail(
            f"{where}.recipe", f"{name} fixes none of the parameters this study searches, within range"
        )
    return found


def enqueue(study: optuna.Study, configs: tuple[dict[str, Any], ...], source: str) -> int:
    """Queue each configuration unless the study already has it; returns how many were queued now."""
    from optuna.trial import TrialState

    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    for params in configs:
        study.enqueue_trial(params, user_attrs={ENQUEUED: source}, skip_if_exists=True)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before


def distributions(space: dict[str, Dim]) -> dict[str, BaseDistribution]:
    """Optuna's distributions of a space: what :mod:`sweeper.study.space` suggests from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, BaseDistribution] = {}
    for k, d in space.items():
        if d.kind in ("bool", "choice"):
            out[k] = CategoricalDistribution([False, True] if d.kind == "bool" else list(d.choices))
        elif d.kind == "int":
            assert d.low is not None and d.high is not None
            out[k] = IntDistribution(int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
        else:
            assert d.low is not None and d.high is not None
            out[k] = FloatDistribution(float(d.low), float(d.high), log=d.log, step=d.step)
    return out


def warm_start(study: optuna.Study, other: optuna.Study, space: dict[str, Dim]) -> int:
    """Add ``other``'s finished trials whose params all fit ``space`` (and cover its unconditional
    dimensions) to ``study``, tagged so they are not counted and never win; each is added once."""
    import optuna
    from optuna.trial import TrialState

    theirs = [d.name.lower() for d in other.directions]
    ours = [d.name.lower() for d in study.directions]
    if theirs != ours:
        raise SweeperError(
            f"--warm-start {other.study_name}: its objectives go {', '.join(theirs)}, this study's "
            f"{', '.join(ours)}; only a study with the same objectives can inform this one"
        )
    have = {t.user_attrs.get(WARM) for t in study.get_trials(deepcopy=False)}
    dists = distributions(space)
    added = 0
    for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        tag = f"{other.study_name}#{t.number}"
        usable = (
            bool(t.values)
            and all(math.isfinite(v) for v in t.values)
            and all(c <= 0 for c in t.constraints.values())
        )
        if tag in have or not usable or not _fits_space(t.params, space):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=dict(t.params),
                distributions={k: dists[k] for k in t.params},
                values=list(t.values),
                user_attrs={WARM: tag},
            )
        )
        added += 1
    log = [*study.user_attrs.get(WARM_LOG, []), {"from": other.study_name, "trials": added}]
    study.set_user_attr(WARM_LOG, log)
    return added


def _fits_space(params: dict[str, Any], space: dict[str, Dim]) -> bool:
    if any(k not in space or not fits(space[k], v) for k, v in params.items()):
        return False
    return all(k in params for k, d in space.items() if d.active(params))
