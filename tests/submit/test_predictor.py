"""Submission models MLflow understands: logged, registered, loaded with pyfunc, used by sweeper predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.helpers.builders import TINY

pytestmark = pytest.mark.slow

STUDY = """
name: models
data: {{root: {root}}}
epochs: 2
sampler: {{name: random, seed: 0}}
pruner: none
fixed: {{batch_size: 8, aug: {{rrc: false}}}}
space:
  lr_head: {{float: [1.0e-3, 3.0e-2], log: true}}
"""


def labels_of(csv_path: Path) -> dict[str, str]:
    return {r["image_name"]: r["pred_label"] for r in csv.DictReader(csv_path.open())}


def test_refit_soup_and_ensemble_are_mlflow_models_that_predict_as_their_csv(
    cli, tmp_path: Path, image_folder: Path, mlflow_url: str
) -> None:
    """Against a tracking *server* (artifacts proxied over HTTP, not a local folder): the path a team
    uses. The default local store logs and loads the refit's model in the end-to-end test."""
    study = tmp_path / "models.yaml"
    study.write_text(STUDY.format(root=image_folder))
    server = {"MLFLOW_TRACKING_URI": mlflow_url}
    swept = cli("run-study", str(study), "--trials", "2", *TINY, env=server)
    assert swept.returncode == 0, swept.stderr
    assert "View run" not in swept.stdout + swept.stderr  # MLflow's link per run: only with --verbose
    r = cli("refit-best", str(study), "--out", "refit", "--register", "digits-refit", env=server)
    assert r.returncode == 0, r.stderr
    uri = next(w.rstrip(",;") for w in r.stdout.split() if w.startswith("models:/"))
    test_files = sorted((image_folder / "test").iterdir())

    tracking = mlflow_url
    mlflow.set_tracking_uri(tracking)
    loaded = mlflow.pyfunc.load_model(uri)
    got = loaded.predict([str(f) for f in test_files])
    assert dict(zip([f.stem for f in test_files], got["pred_label"], strict=True)) == labels_of(
        Path("refit/prediction.csv")
    )
    client = MlflowClient(tracking)
    (version,) = client.search_model_versions("name='digits-refit'")
    exp = client.get_experiment_by_name("models").experiment_id
    assert int(version.version) == 1 and mlflow.search_logged_models([exp], output_format="list")

    for how, top in (("soup", "2"), ("top", "1")):  # a top-1 "ensemble" is the best trial's kept weights
        r = cli("refit-best", str(study), "--out", how, "--combine", how, "--top", top, env=server)
        assert r.returncode == 0, r.stderr
        p = cli("predict", how, str(image_folder / "test"), "--out", f"{how}.csv", env=server)
        assert p.returncode == 0, p.stderr
        assert labels_of(Path(f"{how}.csv")) == labels_of(Path(how) / "prediction.csv")
    latest = cli(
        "predict", str(study), str(image_folder / "test"), "--out", "latest.csv", env=server
    )  # newest
    assert latest.returncode == 0 and labels_of(Path("latest.csv")) == labels_of(Path("top/prediction.csv"))

    truth = Path("truth.csv")
    truth.write_text(
        "image_name,label\n"
        + "".join(f"img_{i:03d},{('bird', 'insect', 'plant')[i % 3]}\n" for i in range(6))
    )
    s = cli("score", "refit/prediction.csv", str(truth), "--per-class")
    assert s.returncode == 0 and s.stdout.startswith("accuracy ") and "bird" in s.stdout

    _mlflow_models_predict(uri, test_files[:2], tracking)
    _the_trials_metric_is_what_predict_scores(cli, study, image_folder, server)


def _the_trials_metric_is_what_predict_scores(cli, study: Path, image_folder: Path, server: dict) -> None:
    """The best trial's val_acc (its kept epoch) is what `predict` + `score` give on the val images
    with that trial's kept weights (the `--combine top --top 1` model: no retraining), to the image."""
    import optuna

    p = cli("predict", "top", str(image_folder / "val"), "--out", "val.csv", env=server)
    assert p.returncode == 0, p.stderr
    val = sorted((image_folder / "val").rglob("*.*"))
    Path("val-labels.csv").write_text(
        "image_name,label\n" + "".join(f"{f.stem},{f.parent.name}\n" for f in val)
    )
    s = cli("score", "val.csv", "val-labels.csv", "--json")
    assert s.returncode == 0, s.stderr
    scored = json.loads(s.stdout)
    right, n = scored["correct"], scored["n"]
    best = optuna.load_study(study_name="models", storage="sqlite:///sweeper.db").best_trial
    assert n == len(val) and right == round(best.value * n) and abs(best.value - right / n) < 1e-6


def _mlflow_models_predict(uri: str, files: list[Path], tracking: str) -> None:
    """MLflow's own CLI on the model, in this environment (--env-manager local: no network needed)."""
    payload = Path("input.json")
    payload.write_text(json.dumps({"inputs": [str(f) for f in files]}))
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_cli),
        "models",
        "predict",
        "-m",
        uri,
        "-i",
        str(payload),
        "-t",
        "json",
        "--env-manager",
        "local",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pred_label" in r.stdout


def test_only_the_best_k_trials_keep_their_weights(cli, tmp_path: Path, image_folder: Path) -> None:
    study = tmp_path / "keep.yaml"
    study.write_text(
        STUDY.format(root=image_folder).replace("name: models", "name: keep") + "keep_weights: 1\n"
    )
    assert cli("run-study", str(study), "--trials", "3", "--epochs", "1", *TINY).returncode == 0
    client = MlflowClient(f"sqlite:///{Path.cwd()}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("keep").experiment_id
    trials = client.search_runs([exp], "tags.`sweeper.kind` = 'trial'")
    kept = [
        r for r in trials if any(a.path == "best.safetensors" for a in client.list_artifacts(r.info.run_id))
    ]
    assert len(trials) == 3 and len(kept) == 1
    gone = [r for r in trials if r not in kept]
    assert all(r.data.tags["sweeper.weights"].startswith("deleted: not among the 1 best") for r in gone)
    assert all(any(a.path == "config.yaml" for a in client.list_artifacts(r.info.run_id)) for r in gone)
    best = max(trials, key=lambda r: r.data.metrics["best_val_acc"])
    assert kept[0].data.metrics["best_val_acc"] == best.data.metrics["best_val_acc"]
