"""Cells: named rows of a study, each a set of parameters laid over ``fixed``.

A grid crosses its dimensions, so a variant that differs from the others in several parameters at once
(recipe 002's contrastive run: another backbone, batch, epoch count and loss) cannot be one of its
values. A study lists such variants under ``cells:``; the space gets one choice dimension, ``cell``,
whose values are their names, and a trial's config is ``defaults ∪ fixed ∪ its cell ∪ sampled params``.
The cell's name is an Optuna param like any other, so refit replays it through the same code.
"""

from __future__ import annotations

from typing import Any

from sweeper.errors import SweeperError
from sweeper.study.bases import flatten
from sweeper.study.checks import Fail, coerce, known_key
from sweeper.study.config import GROUPS
from sweeper.study.dims import Dim

CELL = "cell"  # the space dimension (and Optuna param) naming a trial's cell


def parse(raw: object, fail: Fail) -> dict[str, dict[str, Any]]:
    """``cells: {name: {param: value, ...}, ...}`` -> checked values by dotted key, per cell."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise fail("cells", f"must be a mapping of name: {{param: value, ...}}, got {raw!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, values in raw.items():
        if not isinstance(name, str) or not name:
            raise fail("cells", f"a cell's name must be a non-empty string, got {name!r}")
        if not isinstance(values, dict):
            raise fail(f"cells.{name}", f"must be a mapping of param: value (may be empty), got {values!r}")
        out[name] = {}
        for key, value in flatten(values, GROUPS).items():
            where = f"cells.{name}.{key}"
            try:
                known_key(key, where)
                out[name][key] = coerce(key, value)
            except SweeperError as e:
                raise fail(where, str(e).split(": ", 1)[-1]) from None
            except ValueError as e:
                raise fail(where, str(e)) from None
    return out


def dimension(cells: dict[str, dict[str, Any]], space: dict[str, Dim], fail: Fail) -> dict[str, Dim]:
    """The space with the ``cell`` dimension first; a parameter a cell sets cannot also be searched."""
    if not cells:
        return space
    for name, values in cells.items():
        for key in values:
            if key in space:
                raise fail(
                    f"cells.{name}.{key}", "is also in space; a parameter is set by a cell or searched"
                )
    return {CELL: Dim("choice", choices=tuple(cells)), **space}


def pin(cells: dict[str, dict[str, Any]], sets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Cells after ``--set``: a set parameter wins over every cell; ``--set cell=NAME`` keeps that one."""
    if CELL in sets:
        name = sets[CELL]
        if name not in cells:
            raise SweeperError(f"--set cell={name!r}: the study's cells are {', '.join(cells) or 'none'}")
        cells = {name: cells[name]}
    return {n: {k: v for k, v in c.items() if k not in sets} for n, c in cells.items()}
