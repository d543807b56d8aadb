"""Adjusted p-values for a family of tests: the toggles of one ablation table, judged together.

A table of 14 toggles tested one by one at 5% calls at least one null toggle "helps" or "hurts" about
half the time. Adjusting the p-values across the family fixes which error rate the verdicts hold:

- ``holm`` (Holm 1979, step-down Bonferroni): the familywise error rate, the chance of any false call in
  the table, is at most the level, whatever the tests' dependence. The default: a table's reader acts on
  each call.
- ``bh`` (Benjamini-Hochberg 1995, step-up): the false discovery rate, the expected share of false calls
  among the calls, is at most the level (for independent or positively dependent tests, as the effects
  of an orthogonal design are). It calls more real effects when many are real.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Method = Literal["holm", "bh"]


def adjust(p: Sequence[float], method: Method) -> list[float]:
    """The adjusted p-values, in the order given: a test is called at level a when its value is < a."""
    return holm(p) if method == "holm" else bh(p)


def holm(p: Sequence[float]) -> list[float]:
    """Holm: the i-th smallest p times (m - i + 1), made non-decreasing in that order, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def bh(p: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg: the i-th smallest p times m / i, made non-decreasing from the largest down."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * p[i] / (rank + 1))
        out[i] = running
    return out
