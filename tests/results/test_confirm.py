"""``sweeper confirm``: the top configurations re-run with paired seeds, ranked by a lower bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.results import confirm
from sweeper.study.design import CONFIRM

LR = FloatDistribution(1e-4, 1e-1, log=True)


def add(
    study: optuna.Study, value: float, lr: float, origin: int | None = None, seed: int | None = None
) -> None:
    params: dict[str, Any] = {"lr_head": lr}
    dists: dict[str, Any] = {"lr_head": LR}
    if seed is not None:
        params["seed"], dists["seed"] = seed, CategoricalDistribution([seed])
    attrs = {CONFIRM: origin} if origin is not None else {}
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE, value=value, params=params, distributions=dists, user_attrs=attrs
        )
    )


def test_the_lucky_winner_loses_to_the_steady_one_by_the_lower_bound() -> None:
    st = optuna.create_study(direction="maximize")
    add(st, 0.95, 1e-2)  # trial 0: the luckiest draw
    add(st, 0.93, 1e-3)  # trial 1
    add(st, 0.93, 1e-3)  # a twin of trial 1 (same config): not a separate candidate
    assert [t.number for t in confirm.candidates(st, "maximize", 3)] == [0, 1]
    for v in (0.88, 0.92, 0.86):
        add(st, v, 1e-2, origin=0, seed=1000)
    for v in (0.925, 0.93, 0.92):
        add(st, v, 1e-3, origin=1, seed=1000)
    ranked = confirm.ranking(st, "maximize")
    assert [r.trial for r in ranked] == [1, 0]
    assert ranked[0].mean == pytest.approx(0.925) and ranked[0].bound is not None and ranked[0].bound < 0.925
    assert confirm.winner(st, "maximize") == ranked[0]
    lines = confirm.format_ranking(ranked, "val_acc", "maximize")
    assert "lower 95% confidence bound" in lines[0] and lines[2].split()[0] == "1"


def test_queued_re_runs_are_paired_and_queued_once() -> None:
    st = optuna.create_study(direction="maximize")
    add(st, 0.9, 1e-2)
    add(st, 0.8, 1e-3)
    assert confirm.enqueue(st, "maximize", 2, 3) == 6
    assert confirm.enqueue(st, "maximize", 2, 3) == 0  # resumed: nothing new
    waiting = st.get_trials(states=(TrialState.WAITING,))
    seeds = {
        n: sorted(t.system_attrs["fixed_params"]["seed"] for t in waiting if t.user_attrs[CONFIRM] == n)
        for n in (0, 1)
    }
    assert seeds == {0: [1000, 1001, 1002], 1: [1000, 1001, 1002]}


STUDY = """
name: confirm-e2e
data: {{root: {root}}}
epochs: 1
sampler: {{name: random, seed: 1}}
pruner: none
fixed: {{backbone: test_resnet, img_size: 32, num_workers: 0, batch_size: 8, aug: {{rrc: false}}}}
space:
  lr_head: {{float: [1.0e-3, 3.0e-2], log: true}}
"""


@pytest.mark.slow
def test_confirm_end_to_end_then_refit_says_it_refits_the_confirmed_winner(
    cli: Any, tmp_path: Path, image_folder: Path
) -> None:
    study = tmp_path / "c.yaml"
    study.write_text(STUDY.format(root=image_folder))
    assert cli("run-study", str(study), "--trials", "3").returncode == 0
    r = cli("confirm", str(study), "--top", "2", "--seeds", "2", "--workers", "2")  # two at once
    assert r.returncode == 0, r.stderr
    assert "4 re-runs queued now" in r.stdout and "lower 95% confidence bound" in r.stdout
    again = cli("confirm", str(study), "--top", "2", "--seeds", "2")  # done: nothing to queue or run
    assert again.returncode == 0 and "0 re-runs queued now, 0 to run" in again.stdout
    st = optuna.load_study(study_name="confirm-e2e", storage=f"sqlite:///{Path.cwd()}/sweeper.db")
    assert len(st.trials) == 7 and sum(CONFIRM in t.user_attrs for t in st.trials) == 4
    assert sorted(t.params["seed"] for t in st.trials if CONFIRM in t.user_attrs) == [1000, 1000, 1001, 1001]
    won = confirm.winner(st, "maximize", n_val=15)
    assert won is not None
    refit = cli("refit-best", str(study), "--out", str(tmp_path / "out"))
    assert refit.returncode == 0, refit.stderr
    assert (
        f"refitting trial {won.trial} " in refit.stdout
        and "the confirmed winner of 'confirm-e2e'" in refit.stdout
    )
