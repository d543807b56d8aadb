"""The linear model a design is analysed with, and which of its terms the runs can estimate.

Columns, in order: the intercept; one indicator per block after the first (a block is the runs that
trained with one seed, so a seed that lifts every run of its block is a term, not noise); then the terms:
a two-level dimension coded -1/+1 (its effect, on - off, is twice its coefficient), a choice of k levels
as k-1 indicator columns (each level against the first), and optionally the two-way interactions of the
two-level dimensions (products of their -1/+1 columns; the effect is twice the coefficient: half the
difference between a toggle's effect with the other on and with it off).

A term is estimable when its column is not a combination of the other columns: only then do the runs
determine its coefficient, whatever the other coefficients are. ``sweeper check`` reads this module to
say what a design aliases; the effects fit reads it to fit only what the runs can tell apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sweeper.study.design import levels
from sweeper.study.dims import Dim

if TYPE_CHECKING:
    import numpy as np

TermKind = Literal["main", "interaction"]
BLOCK_KEY = "seed"  # the param that names a run's block


@dataclass(frozen=True)
class Term:
    """One column of the model after the intercept and the blocks."""

    name: str
    kind: TermKind
    scale: float  # effect = scale x coefficient: 2 for a -1/+1 column, 1 for a level's indicator
    factors: tuple[str, ...]  # the designed dimensions it involves


@dataclass(frozen=True)
class Model:
    x: np.ndarray  # runs x (1 + blocks + terms)
    blocks: int  # block columns after the intercept
    terms: tuple[Term, ...]

    def column(self, i: int) -> int:
        """The column of term ``i``."""
        return 1 + self.blocks + i


def build(
    params: Sequence[dict[str, Any]], space: dict[str, Dim], dims: Sequence[str], interactions: bool
) -> Model:
    """The model matrix of runs with these params: intercept, blocks (by seed), mains, interactions."""
    import numpy as np

    cols: list[np.ndarray] = [np.ones(len(params))]
    seeds = sorted({p[BLOCK_KEY] for p in params if BLOCK_KEY in p})
    for s in seeds[1:]:
        cols.append(np.array([1.0 if p.get(BLOCK_KEY) == s else 0.0 for p in params]))
    terms: list[Term] = []
    two: list[tuple[str, str, np.ndarray]] = []
    for d in dims:
        lv = levels(space[d])
        if len(lv) == 2:
            x = np.array([1.0 if p[d] == lv[1] else -1.0 for p in params])
            name = d if space[d].kind == "bool" else f"{d}={lv[1]} vs {lv[0]}"
            cols.append(x)
            terms.append(Term(name, "main", 2.0, (d,)))
            two.append((d, name, x))
            continue
        for level in lv[1:]:
            cols.append(np.array([1.0 if p[d] == level else 0.0 for p in params]))
            terms.append(Term(f"{d}={level} vs {lv[0]}", "main", 1.0, (d,)))
    if interactions:
        for i, (a, name_a, x) in enumerate(two):
            for b, name_b, z in two[i + 1 :]:
                cols.append(x * z)
                terms.append(Term(f"{name_a} x {name_b}", "interaction", 2.0, (a, b)))
    x = np.stack(cols, axis=1) if params else np.zeros((0, len(cols)))
    return Model(x, max(len(seeds) - 1, 0), tuple(terms))


def rank(x: np.ndarray) -> int:
    import numpy as np

    return int(np.linalg.matrix_rank(x)) if x.size else 0


def estimable(x: np.ndarray) -> list[bool]:
    """Per column: is its coefficient determined by the runs (its column not a combination of the others)?

    A coefficient is estimable when no direction of the null space of ``x`` moves it: the null space's
    basis (from one SVD) is zero in that coordinate.
    """
    import numpy as np

    if not x.size:
        return [False] * x.shape[1]
    _, s, vt = np.linalg.svd(x)
    tol = s.max() * max(x.shape) * np.finfo(float).eps
    null = vt[int((s > tol).sum()) :]
    return [bool(v) for v in np.linalg.norm(null, axis=0) < 1e-8] if len(null) else [True] * x.shape[1]


def replicates(params: Sequence[dict[str, Any]], dims: Sequence[str]) -> np.ndarray:
    """The model that fits each distinct setting its own mean, plus the blocks: what it leaves is pure
    replicate error, the scatter of runs whose configuration is the same (another seed)."""
    import numpy as np

    points = [tuple(repr(p[d]) for d in dims) for p in params]
    seeds = sorted({p[BLOCK_KEY] for p in params if BLOCK_KEY in p})
    cols = [np.array([1.0 if pt == q else 0.0 for pt in points]) for q in sorted(set(points))]
    cols += [np.array([1.0 if p.get(BLOCK_KEY) == s else 0.0 for p in params]) for s in seeds[1:]]
    return np.stack(cols, axis=1) if cols else np.zeros((0, 1))
