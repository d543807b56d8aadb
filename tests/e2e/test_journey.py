"""The whole job through the CLI, as a user runs it: sweep, prune, track, resume, refit, predict."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeper.store import record as record_lib
from sweeper.train import artifacts
from tests.helpers.builders import write_study
from tests.helpers.processes import sqlite_stores

pytestmark = pytest.mark.slow

STUDY = """
name: e2e
data: {{root: {root}}}
objective: {{metric: val_acc, direction: maximize}}
epochs: 3
sampler: {{name: random, seed: 3}}
pruner: {{name: percentile, percentile: 75.0, n_startup_trials: 1, n_warmup_steps: 0}}
fixed: {{backbone: test_resnet, img_size: 32, num_workers: 0, batch_size: 8, aug: {{rrc: false}}}}
space:
  lr_head: {{float: [1.0e-6, 1.0e-2], log: true}}
  lr_backbone: {{float: [1.0e-6, 1.0e-2], log: true}}
  aug.hflip: {{bool: true}}
"""


@pytest.fixture
def study_file(tmp_path: Path, image_folder: Path) -> Path:
    return write_study(tmp_path / "e2e.yaml", STUDY.format(root=image_folder))


def test_sweep_track_resume_refit(cli, study_file: Path, image_folder: Path) -> None:
    r = cli("run-study", str(study_file), "--trials", "5")
    assert r.returncode == 0, r.stderr
    assert (
        "best trial" in r.stdout and f"compare trials in the MLflow UI: sweeper ui {study_file}\n" in r.stdout
    )
    assert re.search(r"^trial 0: (COMPLETE|PRUNED)", r.stderr, re.M)  # progress: stderr, not the results
    assert not re.search(r" INFO (mlflow|alembic)|monitoring system metrics", r.stdout + r.stderr)

    study = optuna.load_study(study_name="e2e", storage=sqlite_stores()[0])
    states = [t.state for t in study.trials]
    assert len(states) == 5 and TrialState.COMPLETE in states and TrialState.PRUNED in states
    assert all(s.is_finished() for s in states)
    assert study.metric_names == ["val_acc"]  # optuna-dashboard names the objective

    client = MlflowClient(tracking_uri=sqlite_stores()[1])
    exp = client.get_experiment_by_name("e2e")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on model training
    (study_run,) = client.search_runs([exp.experiment_id], "tags.`sweeper.kind` = 'study'")
    assert study_run.info.status == "FINISHED"  # closed by the sweep's end
    runs = {
        int(r.data.tags["trial_number"]): r
        for r in client.search_runs([exp.experiment_id], "tags.`sweeper.kind` != 'study'")
    }
    assert sorted(runs) == [0, 1, 2, 3, 4]
    param_names = {frozenset(r.data.params) for r in runs.values()}
    assert len(param_names) == 1 and {"lr_head", "aug.hflip", "backbone"} <= next(iter(param_names))
    for t in study.trials:
        run = runs[t.number]
        assert run.info.run_name == f"trial-{t.number:04d}"
        assert run.data.tags["state"] == t.state.name and run.data.tags["study"] == "e2e"
        assert run.info.status == "FINISHED"  # a pruned trial too: its state tag says PRUNED
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in history] == sorted(t.intermediate_values)
        assert [m.value for m in history] == pytest.approx(
            [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        )
        speed = {
            k: client.get_metric_history(run.info.run_id, k)
            for k in ("train_images_per_s", "data_wait_share")
        }
        assert [m.step for m in speed["train_images_per_s"]] == [m.step for m in history]
        assert all(m.value > 0 for m in speed["train_images_per_s"])
        assert all(0 <= m.value <= 1 for m in speed["data_wait_share"])
        first = client.get_metric_history(run.info.run_id, "time_to_first_batch_s")
        assert [m.step for m in first] == [1] and first[0].value > 0
        if t.state == TrialState.PRUNED:
            assert "pruned after epoch" in run.data.tags["reason"]
        if t.state == TrialState.COMPLETE:
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {
                "config.yaml",
                "best.safetensors",
                "confusion_matrix.png",
                "per_class_accuracy.csv",
                "learning_curves.png",
                "history.csv",
            } <= names
            local = Path(client.download_artifacts(run.info.run_id, "config.yaml"))
            cfg, classes, _ = artifacts.read_config(local)
            assert classes == ("bird", "insect", "plant") and cfg.lr_head == t.params["lr_head"]

    again = cli("run-study", str(study_file), "--trials", "5", "--json")  # resumes: already complete
    assert again.returncode == 0 and "study e2e: " in again.stderr
    doc = json.loads(again.stdout)  # the document alone on stdout
    assert doc["counts"]["counted"] == 5 and doc["best"]["trial"] == study.best_trial.number
    assert len(optuna.load_study(study_name="e2e", storage=sqlite_stores()[0]).trials) == 5
    more = cli("--verbose", "run-study", str(study_file), "--trials", "6")  # the libraries' INFO lines too
    assert more.returncode == 0 and "6/6 trials" in more.stdout
    assert "INFO mlflow.system_metrics" in more.stderr and "Started monitoring system metrics" in more.stderr

    shown = cli("show", str(study_file))
    best = optuna.load_study(study_name="e2e", storage=sqlite_stores()[0]).best_trial
    assert shown.returncode == 0 and f"best trial {best.number}:" in shown.stdout

    out = Path("submission")
    r = cli("--quiet", "refit-best", str(study_file), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    refit_doc = json.loads(r.stdout)
    assert "refitting" not in r.stderr and "progress" not in r.stderr  # --quiet: results and errors only
    rows = list(csv.DictReader((out / "prediction.csv").open()))
    assert [row["image_name"] for row in rows] == [f"img_{i:03d}" for i in range(6)]
    assert {row["pred_label"] for row in rows} <= {"bird", "insect", "plant"}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["classes"] == ["bird", "insect", "plant"] and saved["refit_of_trial"] == best.number
    assert saved["trial"]["epochs"] == 3  # the trial's own schedule...
    assert saved["stop_epoch"] == best.user_attrs["best_epoch"]  # ...trained up to the epoch it peaked at
    assert artifacts.load_weights(out / "model.safetensors")
    refit_runs = client.search_runs([exp.experiment_id], "tags.refit_of_trial != ''")
    assert len(refit_runs) == 1 and refit_runs[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(refit_runs[0].info.run_id, "submission")} == {
        "submission/config.yaml",
        "submission/prediction.csv",
    }
    model_uri = refit_runs[0].data.tags["sweeper.model_uri"]
    assert model_uri.startswith("models:/")  # the weights: an MLflow model, loadable from the local store
    assert refit_doc["model_uri"] == model_uri and refit_doc["trial"] == best.number
    p = cli("predict", model_uri, str(image_folder / "test"), "--out", "from_model.csv", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["images"] == 6 and "predicting 6 images" in p.stderr
    again = {
        r["image_name"]: r["pred_label"]
        for r in csv.DictReader(Path("from_model.csv").read_text().splitlines())
    }
    assert again == {row["image_name"]: row["pred_label"] for row in rows}


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(cli, tmp_path: Path, image_folder: Path) -> None:
    study = tmp_path / "fails.yaml"
    study.write_text(
        STUDY.format(root=image_folder).replace("name: e2e", "name: fails")
        + "  optimizer: {choice: [adamw, sgd]}\n  lr_scale_batch: {bool: true}\n".replace(
            "lr_scale_batch: {bool: true}", "freeze_depth: {choice: [0, 9]}"
        )
    )
    r = cli("run-study", str(study), "--trials", "4", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    st = optuna.load_study(study_name="fails", storage=sqlite_stores()[0])
    failed = [t for t in st.trials if t.state == TrialState.FAIL]
    assert failed and record_lib.counts(st.trials)["counted"] == 4  # failures do not count: 4 trials ran
    assert len(st.trials) == 4 + len(failed)
    assert all("freeze_depth=9" in t.user_attrs["fail_reason"] for t in failed)
    client = MlflowClient(tracking_uri=sqlite_stores()[1])
    runs = client.search_runs(
        [client.get_experiment_by_name("fails").experiment_id], "tags.`sweeper.kind` != 'study'"
    )
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert sum(r.info.status == "FAILED" for r in runs) == len(failed)


def test_quickstart_reaches_095_on_the_builtin_digits(cli) -> None:
    # Its first trial alone gets there (about 0.99): each trial is six epochs on the 1,252 digits.
    r = cli("run-study", "quickstart", "--trials", "1")
    assert r.returncode == 0, r.stderr
    best = optuna.load_study(study_name="quickstart", storage=sqlite_stores()[0]).best_value
    assert best >= 0.95, r.stdout
    listed = cli("studies")
    row = next(line for line in listed.stdout.splitlines() if line.startswith("quickstart"))
    assert f"{best:.4f}" in row
