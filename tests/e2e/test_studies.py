"""Shipped studies, the parameter budget and the refit ensembles/soups, driven through the CLI.

The CLI runs in-process (typer's runner) to keep the suite within its time budget; the studies and
stores are real: SQLite Optuna storage, a local MLflow store, real tiny trainings.
"""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sweeper import cli
from sweeper.study import spec
from sweeper.train import artifacts, averaging, evaluation
from tests.helpers.processes import REPO

STUDIES = sorted(
    p.stem for p in (REPO / "sweeper" / "studies").glob("*.yaml") if not p.name.startswith("_")
)  # _*: bases
SMALL = [
    "--set",
    "backbone=test_resnet",
    "--set",
    "pretrained=false",
    "--set",
    "img_size=16",
    "--set",
    "num_workers=0",
]


def sweeper(*args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_recipe_studies_ship() -> None:
    assert {
        "recipe-000",
        "recipe-001",
        "recipe-002",
        "recipe-004",
        "ablation-aug",
        "backbone-scale",
        "lr-freeze",
        "kfold-ensemble",
    } <= set(STUDIES)


@pytest.mark.parametrize("name", STUDIES)
def test_every_shipped_study_passes_check_and_says_what_it_is_for(name: str) -> None:
    out = sweeper("check", name)
    assert f"study {name}" in out and "is valid" in out
    text = (REPO / "sweeper" / "studies" / f"{name}.yaml").read_text()
    assert text.startswith("#") and any(w in text.split("\nname:")[0] for w in ("Reproduces", "Question"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits dataset, 8 train and 4 val images per class (links to its files), all of test.

    Nine studies' trials on all 1,617 images would take minutes of the suite's budget on 2 cores; what
    these tests check (the study runs end to end as written) does not depend on the image count.
    """
    import os

    from sweeper.data import images as data_lib

    os.environ.setdefault("SWEEPER_DATA_DIR", str(tmp_path_factory.getbasetemp() / "sweeper-data"))
    full = data_lib.materialize_builtin()
    root = tmp_path_factory.mktemp("digits-subset")
    for split, n in (("train", 8), ("val", 4)):
        for c in sorted((full / split).iterdir()):
            (root / split / c.name).mkdir(parents=True)
            for f in sorted(c.iterdir())[:n]:
                (root / split / c.name / f.name).symlink_to(f)
    (root / "test").symlink_to(full / "test")
    return root


@pytest.fixture(scope="module")
def shared_stores(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """One Optuna and one MLflow store for all the shipped studies (each is its own study/experiment)."""
    d = tmp_path_factory.mktemp("stores")
    return ["--storage", f"sqlite:///{d}/sweeper.db", "--tracking-uri", f"sqlite:///{d}/mlflow.db"]


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDIES)
def test_one_trial_of_every_shipped_study_on_the_builtin_dataset(
    name: str, digits: Path, shared_stores: list[str]
) -> None:
    extra = ["--set", "folds=2"] if spec.load(name).fixed.get("folds", 1) > 1 else []
    out = sweeper(
        "run-study",
        name,
        "--trials",
        "1",
        "--epochs",
        "1",
        "--data",
        str(digits),
        *SMALL,
        *extra,
        *shared_stores,
    )
    assert "1/1 trials (1 complete" in out, out
    study = optuna.load_study(study_name=spec.load(name).name, storage=shared_stores[1])
    (t,) = study.trials
    assert (
        t.params.keys()
        == spec.load(name).with_overrides(cli.parse_sets(SMALL[1::2] + extra[1::2])).space.keys()
    )


TWO_BACKBONES = """
name: budget
data: {root: DATA}
epochs: 1
sampler: {name: grid, seed: 0}
pruner: none
constraints: {max_params: 1000000}
fixed: {pretrained: false, img_size: 16, num_workers: 0, batch_size: 8}
space:
  backbone: {choice: [test_resnet, resnet50]}
"""


@pytest.mark.slow
def test_an_over_budget_config_is_recorded_and_never_trained(
    image_folder: Path, shared_stores: list[str]
) -> None:
    Path("budget.yaml").write_text(TWO_BACKBONES.replace("DATA", str(image_folder)))
    out = sweeper("run-study", "budget.yaml", "--trials", "2", *shared_stores)
    assert "1 complete, 1 pruned" in out and "over the study's budget of 1.0M" in out
    study = optuna.load_study(study_name="budget", storage=shared_stores[1])
    by_backbone = {t.params["backbone"]: t for t in study.trials}
    big, small = by_backbone["resnet50"], by_backbone["test_resnet"]
    assert big.state == optuna.trial.TrialState.PRUNED and not big.intermediate_values
    assert (
        big.constraints["max_params"] > 0 and small.constraints["max_params"] <= 0
    )  # what samplers learn from
    assert big.user_attrs["num_params"] > 20_000_000 and "not trained" in big.user_attrs["prune_reason"]
    assert study.best_trial.number == small.number
    from mlflow import MlflowClient

    client = MlflowClient(shared_stores[3])
    run = client.get_run(big.user_attrs["mlflow_run_id"])
    assert run.data.tags["state"] == "PRUNED" and "not trained" in run.data.tags["reason"]
    assert not run.data.metrics  # no epoch ever ran
    assert not client.list_artifacts(run.info.run_id)


KFOLD = """
name: kf
data: {root: DATA}
epochs: 1
sampler: {name: random, seed: 0}
pruner: none
fixed: {backbone: test_resnet, pretrained: false, img_size: 16, num_workers: 0, batch_size: 8, folds: 2,
        merge_models: 2, ema_decay: 0.9, sensitivity: {action: boost, top_k: 2, lr: 0.01}}
"""


@pytest.mark.slow
def test_kfold_trial_then_fold_ensemble_and_refit(image_folder: Path, shared_stores: list[str]) -> None:
    Path("kf.yaml").write_text(KFOLD.replace("DATA", str(image_folder)))
    sweeper("run-study", "kf.yaml", "--trials", "1", *shared_stores)
    out = sweeper("refit-best", "kf.yaml", "--out", "ens", "--combine", "folds", *shared_stores)
    assert "folds of trials 0 (2 models)" in out
    doc = yaml.safe_load(Path("ens/config.yaml").read_text())
    assert [m["weights"] for m in doc["ensemble"]] == [
        "members/trial-0000/fold-0.safetensors",
        "members/trial-0000/fold-1.safetensors",
    ]
    cfg, classes, dcfg = artifacts.read_config(Path("ens/members/trial-0000/config.yaml"))
    test_files = tuple(sorted((image_folder / "test").iterdir()))
    probs = (
        sum(
            evaluation.predict_files(
                evaluation.load_for_inference(cfg, 3, artifacts.load_weights(Path("ens") / m["weights"])),
                test_files,
                cfg,
                dcfg,
            )
            for m in doc["ensemble"]
        )
        / 2
    )
    with open("ens/prediction.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["pred_label"] for r in rows] == [classes[i] for i in probs.argmax(1).tolist()]
    out = sweeper(
        "refit-best", "kf.yaml", "--out", "refit", *shared_stores
    )  # retraining works with every option on
    assert {"model.safetensors", "prediction.csv"} <= {p.name for p in Path("refit").iterdir()}


TOP = """
name: top
data: {root: DATA}
epochs: 1
sampler: {name: random, seed: 1}
pruner: none
fixed: {backbone: test_resnet, pretrained: false, img_size: 16, num_workers: 0, batch_size: 8}
space:
  lr_head: {float: [1.0e-3, 1.0e-1], log: true}
"""


@pytest.mark.slow
def test_top_k_ensemble_and_greedy_soup(image_folder: Path, shared_stores: list[str]) -> None:
    Path("top.yaml").write_text(TOP.replace("DATA", str(image_folder)))
    sweeper("run-study", "top.yaml", "--trials", "3", *shared_stores)
    out = sweeper("refit-best", "top.yaml", "--out", "top", "--combine", "top", "--top", "2", *shared_stores)
    assert "(2 models; val_acc=" in out
    assert len(list(Path("top/members").glob("trial-*/best.safetensors"))) == 2
    out = sweeper(
        "refit-best", "top.yaml", "--out", "soup", "--combine", "soup", "--top", "3", *shared_stores
    )
    doc = yaml.safe_load(Path("soup/config.yaml").read_text())
    kept = doc["soup_of_trials"]
    members = [artifacts.load_weights(Path(f"soup/members/trial-{n:04d}/best.safetensors")) for n in kept]
    soup = artifacts.load_weights(Path("soup/model.safetensors"))
    expected = averaging.average_state_dicts(members)
    for k in soup:
        torch.testing.assert_close(soup[k], expected[k])  # the soup's weights are the average of those kept
    assert Path("soup/prediction.csv").is_file() and 0 <= doc["soup_val_acc"] <= 1
