"""The winner's paired lead over the runner-up, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from sweeper.results import paired


def test_three_paired_seeds_give_a_one_sided_t_bound_with_two_df() -> None:
    a = {1000: 0.90, 1001: 0.92, 1002: 0.91}
    b = {1000: 0.88, 1001: 0.91, 1002: 0.87}
    # differences 0.02, 0.01, 0.04: mean 0.023333, sd sqrt(0.00046667 / 2) = 0.0152753,
    # t(0.90, 2 df) = 1.885618, bound 0.023333 - 1.885618 * 0.0152753 / sqrt(3) = 0.0067040
    g = paired.gap(a, b, "maximize")
    assert (g.seeds, g.df, g.level) == (3, 2, 0.90)
    assert g.mean == pytest.approx(0.0233333, abs=1e-7)
    assert g.bound == pytest.approx(0.0067040, abs=1e-6)
    assert g.separated
    assert paired.verdict(g, "val_acc") == (
        "90% lower bound +0.67 points (one-sided paired t over 3 seeds, 2 df): separated"
    )


def test_two_seeds_that_disagree_are_not_separated_and_pairing_cancels_shared_luck() -> None:
    # seed 1001 was a good seed for both: unpaired means overlap, the paired lead is steady
    a = {1000: 0.80, 1001: 0.90}
    b = {1000: 0.79, 1001: 0.88}
    g = paired.gap(a, b, "maximize")  # d = 0.01, 0.02: mean 0.015, sd 0.0070711, t(0.90, 1) = 3.077684
    assert g.df == 1 and g.bound == pytest.approx(0.015 - 3.077684 * 0.0070711 / math.sqrt(2), abs=1e-6)
    assert g.bound == pytest.approx(-0.000388, abs=1e-6) and not g.separated
    assert "not separated" in paired.verdict(g, "val_acc")


def test_minimize_turns_the_sign_and_one_seed_has_no_bound() -> None:
    g = paired.gap({1000: 0.30, 1001: 0.32}, {1000: 0.35, 1001: 0.36}, "minimize")
    assert g.mean == pytest.approx(0.045)  # a's loss is lower: a leads
    one = paired.gap({1000: 0.9}, {1000: 0.8, 1001: 0.7}, "maximize")  # paired on the shared seed only
    assert (one.seeds, one.bound, one.separated) == (1, None, False)
    assert paired.verdict(one, "val_acc").startswith("one paired seed: no bound is possible")
    assert paired.amount(0.0123, "val_loss") == "0.0123"
    with pytest.raises(ValueError, match="no seed in common"):
        paired.gap({1000: 0.9}, {1001: 0.8}, "maximize")
