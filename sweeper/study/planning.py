"""What a design can tell, before it runs and after some of its runs are lost: its resolution, what it
aliases with what, and the smallest effect it detects.

Resolution, read from the runs' model columns (centred, so a column's correlation with another is what
the least-squares fit confuses): II when two main effects are correlated; III when a main effect is
correlated with a two-way interaction (an interaction then biases that main effect, and no interval
covers the bias); IV when the main effects are clear of every two-way interaction but the interactions
are aliased with each other; V when those are clear too.

The smallest detectable effect (``POWER`` at level ``LEVEL``, two-sided) is ``(t_{1-a/2} + t_{power})``
standard errors of an effect; with ``m`` tests under Holm or Benjamini-Hochberg the strictest step tests
at ``a/m``, so the figure there is the one a lone real effect among nulls must reach.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweeper.study import terms
from sweeper.study.design import Design, runs
from sweeper.study.dims import Dim

if TYPE_CHECKING:
    import numpy as np

LEVEL = 0.95  # interval coverage; tests at 1 - LEVEL
POWER = 0.80  # for the smallest detectable effect
TOL = 1e-9
NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


@dataclass(frozen=True)
class Aliasing:
    """What a set of runs confuses with what."""

    resolution: int  # 2, 3, 4 or 5 (5: V or more)
    correlated: tuple[tuple[str, str, float], ...]  # main effects (or a main and a block) correlated
    leaks: tuple[tuple[str, str, float], ...]  # (main, two-way interaction, r): III
    chains: tuple[tuple[str, ...], ...]  # two-way interactions identical up to sign, groups of 2 or more
    partial: float  # largest |r| between two interactions that are not identical
    interactions: int  # two-way interactions of the two-level dimensions
    interaction_df: int  # the degrees of freedom they share, beyond the main effects and blocks
    estimable: int  # interactions estimable with every interaction in the model (what --interactions fits)
    unbalanced: tuple[tuple[str, int, int], ...]  # two-level dimensions on/off unequally: (name, on, off)


def t_quantile(q: float, df: float) -> float:
    """The q quantile of Student's t with ``df`` degrees of freedom (the normal's for infinite df)."""
    from scipy import special  # a dependency of scikit-learn; lighter to import than scipy.stats

    return float(special.ndtri(q) if math.isinf(df) else special.stdtrit(df, q))


def detectable(se: float, df: float, tests: int = 1) -> float:
    """The smallest effect found with ``POWER`` by a two-sided test at ``(1 - LEVEL) / tests``."""
    d = df if df >= 1 else math.inf
    return (t_quantile(1 - (1 - LEVEL) / 2 / tests, d) + t_quantile(POWER, d)) * se


def _correlations(x: np.ndarray) -> np.ndarray:
    import numpy as np

    z = x - x.mean(axis=0)
    norm = np.linalg.norm(z, axis=0)
    z = z / np.where(norm > TOL, norm, 1.0)
    return z.T @ z


def alias(params: Sequence[dict[str, Any]], space: dict[str, Dim], dims: Sequence[str]) -> Aliasing:
    """The aliasing of these runs (one row of params each, the block's seed included)."""

    m = terms.build(params, space, dims, interactions=True)
    c = _correlations(m.x)
    main = [i for i, t in enumerate(m.terms) if t.kind == "main"]
    inter = [i for i, t in enumerate(m.terms) if t.kind == "interaction"]
    col = m.column
    correlated = [
        (m.terms[i].name, m.terms[j].name, float(c[col(i), col(j)]))
        for a, i in enumerate(main)
        for j in main[a + 1 :]
        if m.terms[i].factors != m.terms[j].factors and abs(c[col(i), col(j)]) > TOL
    ]
    correlated += [
        (m.terms[i].name, f"block {b + 1}", float(c[col(i), 1 + b]))
        for i in main
        for b in range(m.blocks)
        if abs(c[col(i), 1 + b]) > TOL
    ]
    leaks = [
        (m.terms[i].name, m.terms[j].name, float(c[col(i), col(j)]))
        for i in main
        for j in inter
        if abs(c[col(i), col(j)]) > TOL
    ]
    chains, partial = _chains(c, [m.terms[j].name for j in inter], [col(j) for j in inter])
    base = m.x[:, : col(len(main))] if main else m.x[:, :1]
    ok = terms.estimable(m.x) if inter else []
    resolution = 2 if correlated else 3 if leaks else 4 if chains or partial > TOL else 5
    return Aliasing(
        resolution,
        tuple(correlated),
        tuple(leaks),
        chains,
        partial,
        len(inter),
        terms.rank(m.x) - terms.rank(base),
        sum(ok[col(j)] for j in inter),
        _unbalanced(params, space, dims),
    )


def _chains(c: np.ndarray, names: list[str], cols: list[int]) -> tuple[tuple[tuple[str, ...], ...], float]:
    """Interactions whose columns are identical up to sign, grouped; and the largest other |r|."""
    seen: set[int] = set()
    chains: list[tuple[str, ...]] = []
    partial = 0.0
    for a, i in enumerate(cols):
        if a in seen:
            continue
        group = [names[a]]
        for b in range(a + 1, len(cols)):
            r = abs(float(c[i, cols[b]]))
            if r > 1 - TOL:
                group.append(names[b])
                seen.add(b)
            elif r > partial:
                partial = r
        if len(group) > 1:
            chains.append(tuple(group))
    return tuple(chains), partial


def _unbalanced(
    params: Sequence[dict[str, Any]], space: dict[str, Dim], dims: Sequence[str]
) -> tuple[tuple[str, int, int], ...]:
    from sweeper.study.design import levels

    out = []
    for d in dims:
        lv = levels(space[d])
        if len(lv) == 2:
            on = sum(p[d] == lv[1] for p in params)
            if on != len(params) - on:
                out.append((d, on, len(params) - on))
    return tuple(out)


def alias_lines(a: Aliasing) -> list[str]:
    """The aliasing in a few lines, for ``sweeper check`` and the effects table."""
    roman = {2: "II", 3: "III", 4: "IV", 5: "V or more"}[a.resolution]
    if a.resolution == 2:
        pairs = ", ".join(f"{x} ~ {y} (r {r:+.2f})" for x, y, r in a.correlated[:4])
        more = f" and {len(a.correlated) - 4} more" if len(a.correlated) > 4 else ""
        head = f"resolution {roman}: main effects are correlated: {pairs}{more} (each SE grows)"
    elif a.resolution == 3:
        head = f"resolution {roman}: main effects are clear of each other but not of the two-way interactions"
    else:
        head = (
            f"resolution {roman}: every main effect is clear of the others, of the blocks and of every "
            "two-way interaction"
        )
    return [head, *(_leak_lines(a) if a.resolution <= 3 else _interaction_lines(a))]


def _leak_lines(a: Aliasing) -> list[str]:
    if not a.leaks:
        return []
    per: dict[str, list[tuple[str, float]]] = {}
    for main, inter, r in a.leaks:
        per.setdefault(main, []).append((inter, r))
    counts = sorted(len(v) for v in per.values())
    top = max(abs(r) for _, _, r in a.leaks)
    main, inter, r = max(a.leaks, key=lambda x: abs(x[2]))
    sign = "=" if abs(r) > 1 - TOL else "~"
    span = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    return [
        f"{len(per)} main effects are each aliased with {span} two-way interactions (|r| up to {top:.2f}), "
        f"e.g. {main} {sign} {inter}: an interaction biases the main effects it is aliased with, and no "
        "interval covers that bias"
    ]


def _interaction_lines(a: Aliasing) -> list[str]:
    if not a.interactions:
        return []
    if a.estimable == a.interactions:
        return [f"all {a.interactions} two-way interactions are estimable (--interactions fits them)"]
    shared = f"the {a.interactions} two-way interactions share {a.interaction_df} degrees of freedom"
    if a.chains and a.partial <= TOL:
        shown = " = ".join(a.chains[0])
        more = f" (and {len(a.chains) - 1} more chains)" if len(a.chains) > 1 else ""
        how = f"aliased in chains: {shown}{more}"
    else:
        how = f"partly aliased with each other (|r| up to {max(a.partial, 1.0 if a.chains else 0.0):.2f})"
    return [f"{shared}, {how}; --interactions estimates {a.estimable} of them by themselves"]


def effect_se(design: Design, space: dict[str, Dim]) -> tuple[float, int, int]:
    """The largest main-effect SE of the full design per unit of one run's noise, its residual df, and
    how many main-effect terms it tests."""
    import numpy as np

    m = terms.build([p for _, p in runs(design, space)], space, design.dims, interactions=False)
    cov = np.linalg.pinv(m.x.T @ m.x)
    se = max(
        t.scale * math.sqrt(max(float(cov[m.column(i), m.column(i)]), 0.0)) for i, t in enumerate(m.terms)
    )
    return se, len(m.x) - terms.rank(m.x), len(m.terms)


def power_lines(design: Design, space: dict[str, Dim], n_val: int | None) -> list[str]:
    """The smallest effect the design detects, per unit of run noise and, given the validation size,
    in accuracy from the validation set's binomial SE."""
    se, df, tests = effect_se(design, space)
    rule = f"{NAMES[design.multiplicity]}'s strictest step, {1 - LEVEL:.0%}/{tests}"
    per, fam = detectable(se, df), detectable(se, df, tests)
    head = (
        f"smallest effect detectable with {POWER:.0%} power: {per:.2f} x sigma at {1 - LEVEL:.0%} per test, "
        f"{fam:.2f} x sigma at {rule} (sigma: one run's noise; {df} residual df)"
    )
    if not n_val:
        return [f"{head}; `sweeper check --data ROOT` states it in accuracy for your validation set"]
    mid, worst = math.sqrt(0.85 * 0.15 / n_val), math.sqrt(0.25 / n_val)
    return [
        head,
        f"from the validation size alone ({n_val} images: binomial SE {mid:.4f} per run at 85% accuracy, "
        f"{worst:.4f} at 50%): {per * mid:.4f} per test and {fam * mid:.4f} at {rule} "
        f"(up to {per * worst:.4f} and {fam * worst:.4f}); seed noise adds to these",
    ]


def describe(design: Design, space: dict[str, Dim], n_val: int | None) -> list[str]:
    """What ``sweeper check`` says a design can tell: its resolution, its aliases, its power."""
    a = alias([p for _, p in runs(design, space)], space, design.dims)
    return [*alias_lines(a), *power_lines(design, space, n_val)]
