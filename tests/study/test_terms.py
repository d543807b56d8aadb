"""The model a design is fitted with: its columns, the rank check, the replicate model."""

from __future__ import annotations

import itertools

import numpy as np

from sweeper.study import design, terms
from sweeper.study.dims import Dim

TOGGLES = [f"t{i}" for i in range(8)]
SPACE = {k: Dim("bool") for k in TOGGLES} | {"head": Dim("choice", choices=("linear", "se", "attention"))}


def rows(codes: np.ndarray, seed: int = 0, dims: list[str] = TOGGLES) -> list[dict[str, object]]:
    return [{**{k: bool(c > 0) for k, c in zip(dims, r, strict=True)}, "seed": seed} for r in codes]


def test_columns_are_intercept_blocks_then_terms_with_their_effect_scales() -> None:
    params = [{"t0": True, "head": "se", "seed": 3}, {"t0": False, "head": "linear", "seed": 4}]
    m = terms.build(params, SPACE, ["t0", "head"], interactions=False)
    assert m.blocks == 1 and [t.name for t in m.terms] == [
        "t0",
        "head=se vs linear",
        "head=attention vs linear",
    ]
    assert [t.scale for t in m.terms] == [2.0, 1.0, 1.0]
    assert m.x.tolist() == [[1, 0, 1, 1, 0], [1, 1, -1, 0, 0]]


def test_the_rank_check_finds_the_aliased_interactions_of_a_resolution_iv_fraction() -> None:
    """8 toggles in 16 runs (resolution IV): every main effect estimable, no two-way interaction is (28
    of them in 7 chains of 4); 5 toggles in 16 runs (resolution V): every term estimable."""
    m = terms.build(rows(design.fractional(8)), SPACE, TOGGLES, interactions=True)
    ok = terms.estimable(m.x)
    kinds = {
        kind: [ok[m.column(i)] for i, t in enumerate(m.terms) if t.kind == kind]
        for kind in ("main", "interaction")
    }
    assert all(kinds["main"]) and len(kinds["interaction"]) == 28 and not any(kinds["interaction"])
    five = terms.build(rows(design.fractional(5), dims=TOGGLES[:5]), SPACE, TOGGLES[:5], interactions=True)
    assert all(terms.estimable(five.x)) and terms.rank(five.x) == 16


def test_two_identical_columns_are_both_not_estimable_and_a_lone_one_is() -> None:
    x = np.array([[1, 1, 1, 0], [1, -1, -1, 1], [1, 1, 1, 2], [1, -1, -1, 3]], dtype=float)
    assert terms.estimable(x) == [True, False, False, True]


def test_replicates_fit_each_setting_so_only_the_seed_scatter_is_left() -> None:
    full = list(itertools.product([-1, 1], repeat=3))
    codes = np.array(full)
    params = rows(codes, 0, TOGGLES[:3]) + rows(codes, 1, TOGGLES[:3])  # every setting twice, two blocks
    reps = terms.replicates(params, TOGGLES[:3])
    assert len(params) - terms.rank(reps) == 16 - 8 - 1  # 8 settings and the second block's shift
