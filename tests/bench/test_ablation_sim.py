"""The ablation simulator runs end to end at a tiny size (its statistical figures need its 200 repeats:
bench/RESULTS.md), and its ground truth is what it says."""

from __future__ import annotations

import numpy as np
import pytest

from bench import ablation_sim as sim


def test_a_tiny_simulation_runs_through_the_shipped_design_and_fit() -> None:
    out = sim.simulate(sim.Setup(repeats=2, noise_samples=40))
    assert out["design"]["runs_total"] == 40 and out["design"]["kind"] == "foldover"
    assert out["repeats"] == 2 and out["mean_runs_used"] == 40
    wrong, big = out["wrong_sign_2se"]
    assert 0 <= wrong <= big and 0 <= out["familywise_false_call_nulls"] <= 1
    assert 0 <= out["coverage_this_val_set"] <= 1 and set(out["false_calls_per_null"]) == set(sim.NULLS)
    lines = sim.lines(out, sim.Setup(repeats=2))
    assert lines[0].startswith("SIMULATED: 2 repeats of 40 runs (foldover") and "wrong-sign" in lines[2]


def test_the_truth_is_exact_null_where_nothing_acts_and_substitutes_add_less_than_their_sum() -> None:
    toggles = list(sim.EFFECTS)
    images = np.random.default_rng(0).normal(sim.MU, sim.TAU_IMAGE, 300)
    here, population = sim.truths(sim.world(toggles, null=True), images)
    assert np.abs(here).max() < 1e-9 and np.abs(population).max() < 1e-9
    here, population = sim.truths(sim.world(toggles), images)
    effect = dict(zip(toggles, population, strict=True))
    for k in sim.NULLS:
        assert effect[k] == pytest.approx(0.0, abs=1e-12)
    # MixUp alone gains 1.5 points, with CutMix on nothing, and it starts slowly: on average under half
    assert 0.002 < effect["aug.mixup"] < 0.0075 and effect["aug.rrc"] > 0.025 and effect["aug.vflip"] < -0.02
