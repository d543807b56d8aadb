"""Holm and Benjamini-Hochberg adjusted p-values against values worked out by hand."""

from __future__ import annotations

import pytest

from sweeper.results import multiplicity

P = [0.01, 0.04, 0.03, 0.005]  # four tests; sorted: 0.005, 0.01, 0.03, 0.04


def test_holm_multiplies_the_i_th_smallest_by_m_minus_i_plus_1_and_keeps_the_order() -> None:
    # 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06 (monotone)
    assert multiplicity.holm(P) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert multiplicity.adjust(P, "holm") == multiplicity.holm(P)


def test_benjamini_hochberg_multiplies_by_m_over_rank_and_takes_the_minimum_from_the_top() -> None:
    # 0.005 x 4/1 = 0.02; 0.01 x 4/2 = 0.02; 0.03 x 4/3 = 0.04; 0.04 x 4/4 = 0.04
    assert multiplicity.bh(P) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert multiplicity.bh([0.04, 0.001, 0.2]) == pytest.approx([0.06, 0.003, 0.2])  # 0.04 x 3/2


def test_bh_calls_more_than_holm_at_the_same_level_and_both_cap_at_one() -> None:
    called = {m: sum(p < 0.05 for p in multiplicity.adjust(P, m)) for m in ("holm", "bh")}
    assert called == {"holm": 2, "bh": 4}
    assert multiplicity.holm([0.5, 0.6]) == [1.0, 1.0]
    assert multiplicity.bh([0.9]) == [0.9] and multiplicity.holm([]) == []
