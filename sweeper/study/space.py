"""The only place that calls ``trial.suggest_*``: a study's space -> one trial's params.

Refit replays the best trial's params through this same code with ``optuna.trial.FixedTrial``, so a
refit can never drift from what was searched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweeper.study.dims import Dim

if TYPE_CHECKING:  # study/ imports nothing heavy at module level
    from optuna.trial import BaseTrial


def suggest(trial: BaseTrial, space: dict[str, Dim]) -> dict[str, Any]:
    """Sample every dimension of ``space`` from ``trial`` (an Optuna Trial or FixedTrial)."""
    params: dict[str, Any] = {}
    for key, dim in space.items():
        if not dim.active(params):  # a conditional dimension whose condition fails: absent, the default holds
            continue
        if dim.kind == "bool":
            params[key] = trial.suggest_categorical(key, [False, True])
        elif dim.kind == "choice":
            params[key] = trial.suggest_categorical(key, list(dim.choices))
        elif dim.kind == "int":
            assert dim.low is not None and dim.high is not None  # a range dimension always has both
            params[key] = trial.suggest_int(
                key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log
            )
        else:
            assert dim.low is not None and dim.high is not None
            params[key] = trial.suggest_float(
                key, float(dim.low), float(dim.high), step=dim.step, log=dim.log
            )
    return params


def absent(space: dict[str, Dim], params: dict[str, Any]) -> list[str]:
    """The dimensions a trial did not sample because their condition failed (they keep their default)."""
    return [k for k in space if k not in params]


def grid(space: dict[str, Dim]) -> dict[str, list[Any]]:
    """The search space as value lists, for Optuna's GridSampler."""
    return {key: dim.grid() for key, dim in space.items()}


def describe(dim: Dim) -> str:
    """A short human form of a dimension, for ``sweeper check``."""
    if dim.kind == "bool":
        return "bool {false, true}" + _when(dim)
    if dim.kind == "choice":
        return "choice {" + ", ".join(map(str, dim.choices)) + "}" + _when(dim)
    extra = " log" if dim.log else (f" step {dim.step}" if dim.step else "")
    return f"{dim.kind} [{dim.low}, {dim.high}]{extra}" + _when(dim)


def _when(dim: Dim) -> str:
    conds = [f"{k} in {{{', '.join(map(str, v))}}}" if len(v) > 1 else f"{k} = {v[0]}" for k, v in dim.when]
    return f", only when {' and '.join(conds)}" if conds else ""
