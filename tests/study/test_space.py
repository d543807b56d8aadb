from __future__ import annotations

import optuna
import pytest

from sweeper.study import space
from sweeper.study.dims import Dim

SPACE = {
    "lr_head": Dim("float", low=1e-4, high=1e-2, log=True),
    "freeze_depth": Dim("int", low=0, high=3),
    "batch_size": Dim("choice", choices=(32, 64)),
    "aug.mixup": Dim("bool"),
}


def test_suggest_samples_every_dim_within_bounds() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        t = study.ask()
        p = space.suggest(t, SPACE)
        assert 1e-4 <= p["lr_head"] <= 1e-2 and p["freeze_depth"] in range(4)
        assert p["batch_size"] in (32, 64) and isinstance(p["aug.mixup"], bool)
        study.tell(t, 0.0)
    dists = study.trials[0].distributions
    assert dists["lr_head"].log and isinstance(dists["freeze_depth"], optuna.distributions.IntDistribution)


def test_fixed_trial_replays_exact_params() -> None:
    params = {"lr_head": 3e-3, "freeze_depth": 2, "batch_size": 64, "aug.mixup": True}
    assert space.suggest(optuna.trial.FixedTrial(params), SPACE) == params


def test_grid_lists_discrete_values() -> None:
    g = space.grid(
        {
            "freeze_depth": Dim("int", low=0, high=2),
            "lr": Dim("float", low=0.1, high=0.3, step=0.1),
            "aug.cutmix": Dim("bool"),
        }
    )
    assert g["freeze_depth"] == [0, 1, 2] and g["aug.cutmix"] == [False, True]
    assert g["lr"] == pytest.approx([0.1, 0.2, 0.3])
