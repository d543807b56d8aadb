"""A simulated objective with known effects, slow starters and noise: no training, for tests and benches.

Each on/off toggle moves the final accuracy by a set amount (on - off); some toggles start slowly (their
learning curve rises later, as CutMix, MixUp and RandAugment do) but end where their effect says; every
run adds seed noise of a set size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BASE = 0.80  # the final accuracy with every toggle at its mean


@dataclass(frozen=True)
class Truth:
    effects: dict[str, float]  # on - off, in accuracy units
    slow: tuple[str, ...] = ()  # toggles whose curve starts slowly
    noise: float = 0.01  # standard deviation of one run's final accuracy
    epochs: int = 15
    tau: dict[str, float] = field(default_factory=dict)

    def final(self, params: dict[str, object], rng: np.random.Generator) -> float:
        v = BASE + sum(e / 2 * (1 if params.get(k) else -1) for k, e in self.effects.items())
        return float(v + rng.normal(0.0, self.noise))

    def curve(self, params: dict[str, object], rng: np.random.Generator) -> list[float]:
        """Per-epoch accuracy, ending at the run's final value; slow toggles delay the rise."""
        final = self.final(params, rng)
        tau = 1.5 + 3.0 * sum(bool(params.get(k)) for k in self.slow)
        norm = 1 - math.exp(-self.epochs / tau)
        return [final * (1 - math.exp(-e / tau)) / norm for e in range(1, self.epochs + 1)]
