"""Refit replays the trial that won, not the study file as it is now: config, data and LR schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeper.data import images as data_lib
from sweeper.store import record as record_lib
from sweeper.train import fit as train
from tests.helpers.builders import load_study, make_image_folder, trial_config

pytestmark = pytest.mark.slow

STUDY = """
name: replay
data: {{root: {root}}}
epochs: 3
sampler: {{name: random, seed: 1}}
pruner: none
fixed: {{backbone: test_resnet, img_size: 32, num_workers: 0, batch_size: 8, warmup_epochs: 1.0}}
space:
  lr_backbone: {{float: [1.0e-4, 1.0e-2], log: true}}
"""


def runs_by_name(experiment: str) -> dict[str, object]:
    client = MlflowClient(f"sqlite:///{Path.cwd()}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def lr_history(run_id: str) -> list[float]:
    client = MlflowClient(f"sqlite:///{Path.cwd()}/mlruns/mlflow.db")
    return [m.value for m in sorted(client.get_metric_history(run_id, "lr/backbone"), key=lambda m: m.step)]


def test_refit_without_the_overrides_trains_the_winning_trial_as_it_ran(
    cli, tmp_path: Path, image_folder: Path
) -> None:
    elsewhere = make_image_folder(tmp_path / "other-data", seed=1)  # what the sweep really ran on
    path = tmp_path / "replay.yaml"
    path.write_text(STUDY.format(root=image_folder))
    sets = ["--set", "aug.hflip=false", "--set", "lr_head=0.02", "--set", "aug.rrc=false"]
    r = cli("run-study", str(path), "--trials", "2", "--data", str(elsewhere), *sets)
    assert r.returncode == 0, r.stderr

    # The file is edited after the sweep: a fixed value and the data root change.
    path.write_text(STUDY.format(root=tmp_path / "gone").replace("batch_size: 8", "batch_size: 4"))
    again = cli("run-study", str(path), "--trials", "3", "--data", str(elsewhere), *sets)
    assert again.returncode == 2 and "fixed.batch_size (8 -> 4)" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1

    r = cli("refit-best", str(path), "--out", "out")
    assert r.returncode == 0, r.stderr
    assert f"data {elsewhere}" in r.stdout

    st = optuna.load_study(study_name="replay", storage=f"sqlite:///{Path.cwd()}/sweeper.db")
    best = record_lib.best_trial(st)
    runs = runs_by_name("replay")
    trial_run, refit_run = runs[f"trial-{best.number:04d}"], runs[f"refit-trial-{best.number:04d}"]
    assert refit_run.data.params == trial_run.data.params  # exactly the config that ran
    assert trial_run.data.params["lr_head"] == "0.02" and trial_run.data.params["aug.hflip"] == "False"
    assert trial_run.data.params["batch_size"] == "8"
    tags = refit_run.data.tags
    assert tags["sweeper.refit.data"] == "train+val" and tags["sweeper.refit.overrides"] == "none"
    stop = int(tags["sweeper.refit.stop_epoch"])
    assert stop == best.user_attrs["best_epoch"]
    assert lr_history(refit_run.info.run_id) == pytest.approx(lr_history(trial_run.info.run_id)[:stop])


def test_refit_set_overrides_are_printed_and_tagged(cli, tmp_path: Path, image_folder: Path) -> None:
    path = tmp_path / "replay.yaml"
    path.write_text(STUDY.format(root=image_folder))
    assert cli("run-study", str(path), "--trials", "1", "--epochs", "1").returncode == 0
    r = cli("refit-best", "replay", "--out", "out", "--set", "seed=5")  # no such file: the stored name
    assert r.returncode == 0, r.stderr
    assert "--set seed=5 (the trial ran with 0)" in r.stdout
    refit_run = next(v for k, v in runs_by_name("replay").items() if k.startswith("refit"))
    assert refit_run.data.params["seed"] == "5" and refit_run.data.params["epochs"] == "1"
    assert refit_run.data.tags["sweeper.refit.overrides"] == '{"seed": 5}'


def test_a_refit_stopped_mid_schedule_follows_the_trials_learning_rates(image_folder: Path) -> None:
    data = data_lib.scan(image_folder)
    cfg = dataclasses.replace(trial_config(epochs=4), warmup_epochs=1.0, lr_schedule="cosine")
    trial = train.run_trial(cfg, data)
    refit = train.run_trial(cfg, data, train_on_val=True, stop_epoch=2)
    lrs = [h["lr/backbone"] for h in trial.history]
    assert len(refit.history) == 2
    assert [h["lr/backbone"] for h in refit.history] == pytest.approx(lrs[:2])
    assert all("lr/head" in h for h in trial.history)  # the head's own LR, logged apart
    assert lrs[1] > 0.4 * cfg.lr_backbone  # mid-schedule: the refit did not anneal to zero by its end


def test_an_ensemble_over_the_parameter_budget_is_refused_unless_allowed(tmp_path: Path) -> None:
    from sweeper.errors import SweeperError
    from sweeper.submit import refit

    text = "name: b\ndata: {root: builtin:digits}\nconstraints: {max_params: 500000}\n"
    spec = load_study(tmp_path, text, "b")
    one = refit.Member(0, "best", trial_config(), {}, tmp_path / "w.safetensors")  # about 373k parameters
    refit._check_budget(spec, [one], 3, allow=False)  # one model fits
    with pytest.raises(SweeperError, match=r"ensemble of 2 models has 0\.\d+M parameters, over .*--allow"):
        refit._check_budget(spec, [one, one], 3, allow=False)
    refit._check_budget(spec, [one, one], 3, allow=True)
