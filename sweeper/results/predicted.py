"""The configuration a designed study's effects fit predicts best: a candidate for ``sweeper confirm``.

A fractional or balanced design runs a fraction of the combinations, so the best combination may be one
no trial ran. The fit of :mod:`sweeper.results.effects` (main effects, additive) predicts every
combination; under an additive model the best one takes each designed dimension's best level on its
own, so it is found one dimension at a time. The dimensions a design does not vary (learning rates the
sampler drew, ...) are those of the best design run. Confirmation then trains it like any other
candidate: a prediction is a hypothesis until its re-runs say otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from sweeper.results import effects
from sweeper.study import terms
from sweeper.study.design import Design, levels
from sweeper.study.dims import Dim


@dataclass(frozen=True)
class Prediction:
    """The predicted best configuration (params without the seed) and its predicted value."""

    params: dict[str, Any]
    value: float


def best(
    trials: Sequence[FrozenTrial], design: Design, space: dict[str, Dim], direction: str
) -> Prediction | None:
    """The combination of designed levels the main-effects fit predicts best; None while the complete
    design runs cannot estimate every main effect (too few runs, or a level never run)."""
    used = effects.design_runs(trials, design, space).used
    if not used:
        return None

    def columns(rows: list[dict[str, Any]]) -> np.ndarray:  # no block columns: a prediction has no seed
        plain = [{k: v for k, v in r.items() if k != terms.BLOCK_KEY} for r in rows]
        return terms.build(plain, space, design.dims, False).x

    x = columns([dict(t.params) for t in used])
    if terms.rank(x) < x.shape[1]:
        return None
    y = np.array([float(t.values[0]) for t in used])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    sign = 1.0 if direction == "maximize" else -1.0
    top = max(used, key=lambda t: sign * float(t.values[0]))
    params = {k: v for k, v in top.params.items() if k != "seed"}
    for d in design.dims:
        options = [{**params, d: level} for level in levels(space[d])]
        params = options[int(np.argmax(sign * (columns(options) @ beta)))]
    return Prediction(params, float((columns([params]) @ beta)[0]))
