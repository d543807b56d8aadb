"""Submission models MLflow understands: logged, registered, loaded with pyfunc, used by sweeper predict."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from sweeper.servable.pixels import decode
from tests.helpers import bare_env
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
    assert dict(zip([f.stem for f in test_files], [p.pred_label for p in got], strict=True)) == labels_of(
        Path("refit/prediction.csv")
    )
    client = MlflowClient(tracking)
    (version,) = client.search_model_versions("name='digits-refit'")
    exp = client.get_experiment_by_name("models").experiment_id
    assert int(version.version) == 1 and mlflow.search_logged_models([exp], output_format="list")

    uris = {"refit": uri}
    for how, top in (("soup", "2"), ("top", "1")):  # a top-1 "ensemble" is the best trial's kept weights
        r = cli("refit-best", str(study), "--out", how, "--combine", how, "--top", top, env=server)
        assert r.returncode == 0, r.stderr
        uris[how] = next(w.rstrip(",;") for w in r.stdout.split() if w.startswith("models:/"))
        p = cli("predict", how, str(image_folder / "test"), "--out", f"{how}.csv", "--probs", env=server)
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

    _the_models_stand_alone(uris, test_files, tracking)
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


def _the_models_stand_alone(uris: dict[str, str], files: list[Path], tracking: str) -> None:
    """Where every dependency is installed but sweeper is not: the refit and the ensemble load with
    ``mlflow.pyfunc.load_model`` and answer as their ``prediction.csv`` (images as paths and as base64
    bytes, the probabilities as ``sweeper predict --probs`` writes them); the refit serves with MLflow's
    own server, which takes bytes, paths and arrays alike and answers a bad input with what it expected."""
    env = {**bare_env.without_project(Path("bare")), "MLFLOW_TRACKING_URI": tracking}
    no = bare_env.imports_sweeper(env)
    assert no.returncode != 0 and "No module named 'sweeper'" in no.stderr, no.stderr
    stems = [f.stem for f in files]
    loading = bare_env.start_loading({k: uris[k] for k in ("refit", "top")}, files, env)
    try:
        _serves_bytes_paths_and_arrays(uris["refit"], files, env)
        got = bare_env.loaded(loading)
    finally:
        if loading.poll() is None:
            loading.kill()
    assert not got["sweeper_loaded"] and "pred_label: string" in got["refit"]["signature"]
    for how in ("refit", "top"):
        want = labels_of(Path(how) / "prediction.csv")
        assert dict(zip(stems, got[how]["paths"], strict=True)) == want
        assert dict(zip(stems, got[how]["bytes"], strict=True)) == want
    rows = {r["image_name"]: r for r in csv.DictReader(Path("top.csv").read_text().splitlines())}
    written = [float(v) for s in stems for k, v in rows[s].items() if k.startswith("p_")]
    served = [p for row in got["top"]["probs"] for p in row]
    assert served == pytest.approx(written, abs=5e-7)  # predict --probs writes 6 decimals


def _serves_bytes_paths_and_arrays(uri: str, files: list[Path], env: dict[str, str]) -> None:
    with bare_env.serving(uri, env, Path("serve.log")) as url:
        b64 = [base64.b64encode(f.read_bytes()).decode() for f in files]
        pixels = decode(files[0]).tolist()  # an H x W x 3 array, as JSON
        status, answer = bare_env.invoke(url, [*b64, *map(str, files), pixels])
        assert status == 200, answer
        want = labels_of(Path("refit/prediction.csv"))
        stems = [f.stem for f in files]  # bytes, then paths, then the first as pixels
        labels = [p["pred_label"] for p in answer["predictions"]]
        assert labels == [want[s] for s in [*stems, *stems, stems[0]]]
        status, answer = bare_env.invoke(url, [b64[0], "not-a-file.png"])
        assert status == 400 and "input 1: 'not-a-file.png' is no file on the server" in answer["message"]
        assert "base64-encoded image file bytes, or an H x W x 3 uint8 array" in answer["message"]


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
