from __future__ import annotations

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweeper.results import ablation

BOOL = CategoricalDistribution([False, True])


def trial(curve: list[float], state: TrialState = TrialState.COMPLETE, **params: bool) -> FrozenTrial:
    """A real FrozenTrial with per-epoch values ``curve`` (epoch 1, 2, ...) and boolean params."""
    values = {i + 1: v for i, v in enumerate(curve)}
    best = max(curve) if curve else None
    return create_trial(
        state=state,
        value=best if state == TrialState.COMPLETE else None,
        params=params,
        distributions={k: BOOL for k in params},
        intermediate_values=values,
    )


def test_comparison_epoch_is_the_deepest_where_the_most_options_compare() -> None:
    trials = [
        trial([0.1] * 4, flag=True, other=True),
        trial([0.1] * 4, flag=True, other=False),
        trial([0.1] * 2, TrialState.PRUNED, flag=False, other=True),
        trial([0.1] * 2, TrialState.PRUNED, flag=False, other=False),
        trial([0.1], TrialState.PRUNED, flag=True, other=True),
    ]
    assert ablation.comparison_epoch(trials, ["flag"]) == 2  # at 3-4 no trial has the flag off
    assert ablation.comparison_epoch(trials, ["other"]) == 2  # 2 on, 2 off up to epoch 2
    assert ablation.comparison_epoch(trials[:2], ["flag"]) == 4  # none compares: the deepest epoch
    assert ablation.comparison_epoch([trial([], TrialState.FAIL, flag=True)], ["flag"]) == 0


def test_value_at_is_the_best_so_far_and_none_before_the_trial_got_there() -> None:
    t = trial([0.5, 0.7, 0.6])
    assert ablation.value_at(t, 3, "maximize") == 0.7  # = the complete trial's objective value
    assert ablation.value_at(t, 1, "maximize") == 0.5
    assert ablation.value_at(t, 3, "minimize") == 0.5
    assert ablation.value_at(t, 4, "maximize") is None


def test_effect_is_the_difference_of_means_with_an_interval_around_it() -> None:
    on = [0.80, 0.82, 0.84, 0.86]
    off = [0.60, 0.61, 0.62, 0.63]
    trials = [trial([0.1, v], flag=True, other=i % 2 == 0) for i, v in enumerate(on)]
    trials += [trial([0.1, v], flag=False, other=i % 2 == 1) for i, v in enumerate(off)]
    ab = ablation.compute(trials, ["other", "flag"], "val_acc", "maximize")
    first = ab.rows[0]
    assert first.param == "flag" and first.verdict == "helps"  # sorted: most helpful first
    assert first.effect == pytest.approx(np.mean(on) - np.mean(off))
    assert first.low is not None and first.high is not None
    assert first.low <= first.effect <= first.high and first.low > 0
    assert (first.n_on, first.n_off) == (4, 4)
    assert ab.rows[1].param == "other" and ab.rows[1].verdict == "unclear"
    assert ab.epoch == 2 and (ab.n_complete, ab.n_pruned) == (8, 0)
    assert ablation.compute(trials, ["flag"], "val_acc", "maximize") == ablation.compute(
        trials, ["flag"], "val_acc", "maximize"
    )  # seeded bootstrap: the same table every time


def test_minimize_flips_what_helps() -> None:
    trials = [trial([v], flag=True) for v in (0.2, 0.21, 0.22)] + [
        trial([v], flag=False) for v in (0.9, 0.91, 0.92)
    ]
    row = ablation.compute(trials, ["flag"], "val_loss", "minimize").rows[0]
    assert row.effect is not None and row.effect < 0 and row.verdict == "helps"


def test_pruned_trials_count_at_the_common_epoch_and_early_stoppers_and_failures_do_not() -> None:
    trials = [
        trial([0.5, 0.6, 0.7], flag=True),
        trial([0.4, 0.5, 0.9], flag=False),
        trial([0.3, 0.35], TrialState.PRUNED, flag=True),  # reached epoch 2: read there
        trial([0.45, 0.5], TrialState.PRUNED, flag=False),
        trial([0.2], TrialState.PRUNED, flag=False),  # stopped at epoch 1: left out
        trial([0.99, 0.99], TrialState.FAIL, flag=False),  # failed: left out whatever it reported
    ]
    ab = ablation.compute(trials, ["flag"], "val_acc", "maximize")
    assert ab.epoch == 2  # 3 of the 5 finished trials reached epoch 2, only 2 reached epoch 3
    assert (ab.n_complete, ab.n_pruned, ab.n_stopped_earlier, ab.n_failed) == (2, 2, 1, 1)
    row = ab.rows[0]
    assert (row.n_on, row.n_off) == (2, 2)
    assert row.mean_on == pytest.approx((0.6 + 0.35) / 2)  # best up to epoch 2, not the final 0.7
    assert row.mean_off == pytest.approx(0.5)
    assert row.verdict == "unclear"


def test_a_dimension_pinned_in_some_trials_only_uses_the_trials_that_searched_it() -> None:
    trials = [trial([0.5], flag=True), trial([0.6]), trial([0.7], flag=False)]
    row = ablation.compute(trials, ["flag"], "val_acc", "maximize").rows[0]
    assert (row.n_on, row.n_off) == (1, 1) and row.effect == pytest.approx(-0.2)
    assert row.verdict == "too few trials" and row.low is None  # one trial a side: no interval


def test_format_table_says_what_was_compared() -> None:
    trials = [trial([v], flag=v > 0.5) for v in (0.4, 0.45, 0.7, 0.75)]
    lines = ablation.format_table(ablation.compute(trials, ["flag"], "val_acc", "maximize"))
    assert lines[0].startswith("val_acc at epoch 1") and "4 trials (4 complete, 0 pruned)" in lines[0]
    assert lines[2].split()[:3] == ["param", "on", "off"]
    assert lines[3].split()[:3] == ["flag", "2", "2"] and "+0.3000" in lines[3] and lines[3].endswith("helps")
