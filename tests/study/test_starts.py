"""Known-good starts: enqueued configurations run first and once; warm starts inform without counting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.errors import SweeperError
from sweeper.store import record as record_lib
from sweeper.store import stores
from sweeper.study import space as space_lib
from sweeper.study import spec as spec_lib
from sweeper.study import starts
from sweeper.sweep import loop as sweep
from tests.helpers.builders import load_study

STUDY = """
name: {name}
data: {{root: builtin:digits}}
pruner: none
sampler: {{name: {sampler}, seed: 0, {extra}}}
fixed: {{backbone: test_resnet}}
space:
  lr_backbone: {{float: [1.0e-5, 1.0e-2], log: true}}
  lr_head: {{float: [1.0e-4, 1.0e-1], log: true}}
  aug.cutmix: {{bool: true}}
{tail}
"""


def load(tmp_path: Path, name: str = "s", sampler: str = "random", extra: str = "", tail: str = ""):
    return load_study(tmp_path, STUDY.format(name=name, sampler=sampler, extra=extra, tail=tail), name)


def objective(spec: spec_lib.Study):
    def f(trial: optuna.Trial) -> float:
        p = space_lib.suggest(trial, spec.space)
        return -abs(p["lr_head"] - 0.01) + (0.01 if p["aug.cutmix"] else 0.0)

    return f


@pytest.mark.slow
def test_enqueued_configurations_run_first_and_are_not_repeated_on_resume(tmp_path: Path) -> None:
    tail = "enqueue:\n  - {lr_head: 0.003, aug: {cutmix: true}}\n  - {recipe: recipe-004}\n"
    spec = load(tmp_path, tail=tail)
    recipe = {"lr_backbone": 1e-4, "lr_head": 1e-3, "aug.cutmix": True}  # what recipe 004 fixes
    assert spec.enqueue == ({"lr_head": 0.003, "aug.cutmix": True}, recipe)
    st = sweep.run(spec, 3, objective(spec))
    first, second = st.trials[0].params, st.trials[1].params
    assert first["lr_head"] == 0.003 and first["aug.cutmix"] is True
    assert second["lr_backbone"] == 1e-4 and second["lr_head"] == 1e-3
    assert st.trials[0].user_attrs[starts.ENQUEUED] == "the study file's enqueue"
    st = sweep.run(spec, 6, objective(spec))  # resumed twice over: the queue is not refilled
    st = sweep.run(spec, 7, objective(spec))
    assert [t.params["lr_head"] for t in st.trials].count(0.003) == 1
    assert len(st.trials) == 7 and all(t.state == TrialState.COMPLETE for t in st.trials)


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (
            "enqueue:\n  - {backbone: resnet18}\n",
            r"enqueue\[0\].backbone: is not searched by this study \(it is fixed\)",
        ),
        ("enqueue:\n  - {lr_head: 5.0}\n", r"enqueue\[0\].lr_head: 5.0 is outside the searched dimension"),
        ("enqueue:\n  - {lr_heads: 0.01}\n", r"did you mean 'lr_head'"),
        (
            "enqueue:\n  - {recipe: quickstart}\n",
            r"enqueue\[0\].recipe: quickstart fixes none of the parameters",
        ),
        ("enqueue: {lr_head: 0.01}\n", r"enqueue: must be a list"),
    ],
)
def test_bad_enqueue_entries_are_named(tmp_path: Path, tail: str, message: str) -> None:
    with pytest.raises(SweeperError, match=message):
        load(tmp_path, tail=tail)


def test_a_pinned_parameter_leaves_the_enqueued_configurations(tmp_path: Path) -> None:
    spec = load(tmp_path, tail="enqueue:\n  - {lr_head: 0.003}\n  - {lr_backbone: 0.001, lr_head: 0.01}\n")
    assert spec.with_overrides({"lr_head": 0.02}).enqueue == ({"lr_backbone": 0.001},)


@pytest.mark.slow
def test_a_warm_start_changes_the_first_sampled_trial_and_never_counts_or_wins(tmp_path: Path) -> None:
    donor_spec = load(tmp_path, name="donor")
    donor = sweep.run(donor_spec, 8, objective(donor_spec))
    tpe = "n_startup_trials: 3"
    cold_spec = load(tmp_path, name="cold", sampler="tpe", extra=tpe)
    cold = sweep.run(cold_spec, 1, objective(cold_spec)).trials[0].params
    warm_spec = dataclasses.replace(cold_spec, name="warm")

    def prepare(st: optuna.Study) -> None:
        assert starts.warm_start(st, donor, warm_spec.space) == 8

    st = sweep.run(warm_spec, 1, objective(warm_spec), prepare=prepare)
    own = [t for t in st.trials if not record_lib.borrowed(t)]
    assert len(st.trials) == 9 and len(own) == 1 and own[0].params != cold  # the sampler started informed
    assert record_lib.counts(st.trials)["counted"] == 1
    assert record_lib.best_trial(st).number == own[0].number
    assert st.user_attrs[starts.WARM_LOG] == [{"from": "donor", "trials": 8}]
    again = optuna.load_study(study_name="warm", storage=stores.storage(None))
    assert starts.warm_start(again, donor, warm_spec.space) == 0  # once only
