"""Shipped studies, the parameter budget and the refit ensembles/soups, driven through the CLI.

The CLI runs in-process (typer's runner) to keep the suite within its time budget; the studies and
stores are real: SQLite Optuna storage, a local MLflow store, real tiny trainings.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sweeper import cli
from sweeper.errors import SweeperError
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
@pytest.mark.parametrize("name", [n for n in STUDIES if spec.load(n).design is None])  # a design runs whole
def test_one_trial_of_every_shipped_study_on_the_builtin_dataset(
    name: str, digits: Path, shared_stores: list[str]
) -> None:
    extra = ["--set", "folds=2"] if spec.load(name).fixed.get("folds", 1) > 1 else []
    if spec.load(name).cells:  # the first cell: others name tensors test_resnet does not have (000)
        extra += ["--set", f"cell={next(iter(spec.load(name).cells))}"]
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


@pytest.fixture
def run_cli(cli: Any) -> Any:
    """The CLI in a subprocess (conftest's ``cli``; this module's ``cli`` is the package)."""
    return cli


@pytest.mark.slow
def test_the_mission_command_runs_the_whole_ablation_design_and_a_shorter_one_is_refused(
    digits: Path, shared_stores: list[str], run_cli: Any
) -> None:
    """`sweeper run-study ablation-aug --trials 40` on tiny data: 40 real 1-epoch runs of test_resnet at 16
    px (about 2 minutes on 2 CPU cores), a complete resolution IV design that `show --ablation` fits;
    `--trials 31` would stop it short and is refused before anything runs."""
    args = ["--epochs", "1", "--data", str(digits), *SMALL, *shared_stores]
    short = run_cli("run-study", "ablation-aug", "--trials", "31", *args)
    assert short.returncode == 2 and short.stderr.count("\n") == 1, short.stderr
    assert short.stderr.startswith(
        "error: --trials 31 stops the study's foldover design at 31 of its 40 runs (block 1 (seed 1) would "
        "hold 11 of its 20 runs), which unbalances every effect it fits: use --trials 40"
    )
    out = sweeper("run-study", "ablation-aug", "--trials", "40", *args)
    assert "40/40 trials (40 complete" in out, out
    table = sweeper("show", "ablation-aug", "--ablation", "--storage", shared_stores[1])
    assert "val_acc of 40 of 40 design runs (complete design)" in table, table
    assert "with the seed as a block term (2 blocks)" in table and "resolution IV" in table
    assert "Holm-adjusted p < 0.05 across the family of all 14 terms" in table
    assert "24 residual df, all lack of fit" in table
    rows = [line for line in table.splitlines() if line.startswith("aug.")]
    assert len(rows) == 14 and all(r.split()[-1] in ("helps", "hurts", "negligible", "resolve") for r in rows)


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
    assert not [k for k in run.data.metrics if not k.startswith("system/")]  # no epoch ever ran (the process
    # that checked its size has its system metrics)
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


# ---- what each recipe study's comment cites, in its resolved configs ---------------------------------


def resolved(name: str, cell: str | None = None, **params: object) -> spec.TrialConfig:
    return spec.load(name).resolve({**({"cell": cell} if cell else {}), **params})


TENSORS = ("layer4.1.conv1.weight", "layer4.2.conv3.weight")  # 000: 8.ipynb and 7.py, by name


def test_recipe_000_runs_at_lr_1e3_with_its_freeze_and_boost_cells_by_tensor_name() -> None:
    study = spec.load("recipe-000")
    assert list(study.space) == ["cell"] and list(study.cells) == ["none", "freeze", "boost"]
    for cell in study.cells:
        c = resolved("recipe-000", cell)
        assert (c.lr_backbone, c.lr_head, c.opt_eps, c.lr_schedule) == (1e-3, 1e-3, 1e-5, "onecycle")
        assert (c.batch_size, c.epochs, c.aug.rotation_deg, c.aug.rotation_interpolation) == (
            96,
            50,
            30,
            "nearest",
        )
    none, freeze, boost = (resolved("recipe-000", c) for c in ("none", "freeze", "boost"))
    assert none.freeze == none.train_only == none.boost == () and none.grad_clip is None
    assert freeze.freeze == TENSORS and freeze.train_only == () and freeze.sensitivity.action == "none"
    assert boost.train_only == boost.boost == TENSORS
    assert boost.sensitivity.lr == (1e-3, 8e-4) and boost.sensitivity.weight_decay == (0.005, 0.007)
    assert (boost.grad_clip, boost.grad_clip_tensors, boost.freeze_bn_stats) == (2.0, TENSORS[:1], False)


def test_recipe_000s_lr_log_fits_onecycle_at_1e3_and_not_at_3e3() -> None:
    """lab1/img/training_metadata_{loss,acc}.json: LR 2.054e-6 in epoch 48, 4.17e-9 in epoch 49 (0-based),
    through torch's OneCycleLR as sweeper builds it (216 steps an epoch: ~20.7k images at batch 96)."""
    from sweeper.train import schedules

    def lrs(lr: float) -> list[float]:
        c = spec.build_config({**resolved("recipe-000", "none").flat(), "lr_backbone": lr, "lr_head": lr})
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched, out = schedules.create(opt, c, 216), []
        for _ in range(50 * 216):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    at_1e3, at_3e3 = lrs(1e-3), lrs(3e-3)
    assert min(at_1e3[48 * 216 : 49 * 216]) < 2.054e-6 < max(at_1e3[48 * 216 : 49 * 216])
    assert min(at_1e3[49 * 216 :]) == pytest.approx(4.0e-9) and min(at_1e3[49 * 216 :]) < 4.17e-9
    assert min(at_3e3) == pytest.approx(1.2e-8) and min(at_3e3) > 4.17e-9  # 3e-3 never gets that low


def test_recipe_002_has_the_contrastive_run_as_its_own_row() -> None:
    study = spec.load("recipe-002")
    assert list(study.cells) == ["resnext50", "resnet50", "resnext101", "contrastive"]
    plain = [resolved("recipe-002", c) for c in ("resnext50", "resnet50", "resnext101")]
    assert [c.backbone for c in plain] == [
        "resnext50_32x4d.tv_in1k",
        "resnet50.tv_in1k",
        "resnext101_32x8d.tv2_in1k",
    ]
    assert all((c.batch_size, c.epochs, c.cosine_weight) == (64, 50, 0.0) for c in plain)
    c = contrastive = resolved("recipe-002", "contrastive")
    assert (c.backbone, c.batch_size, c.epochs) == ("resnext101_64x4d.tv_in1k", 32, 100)
    assert (c.cosine_weight, c.cosine_margin, c.cosine_partners) == (15.0, 0.2, "dataset")
    assert (c.cosine_same_class, c.cosine_partner_ce) == (0.5, True)
    for c in [*plain, contrastive]:
        assert (c.lr_backbone, c.grad_clip, c.head_dropout, c.normalize, c.drop_last) == (
            3e-5,
            10.0,
            0.7,
            False,
            False,
        )
        assert (c.aug.rotation_deg, c.aug.rotation_interpolation, c.seed) == (50, "nearest", 6666)


def test_recipe_004_trains_its_stem_batchnorms_bilinear_in_fp16() -> None:
    c = resolved("recipe-004", backbone="resnest200e.in1k", head="linear")
    assert (c.freeze_stem, c.freeze_bn_stats, c.interpolation, c.precision) == (
        True,
        False,
        "bilinear",
        "fp16",
    )
    assert (c.drop_last, c.lr_backbone, c.lr_head, c.weight_decay, c.eval.crop_pct) == (
        False,
        1e-4,
        1e-3,
        1e-5,
        0.625,
    )
    assert (c.seed, c.img_size, c.batch_size, c.epochs, c.patience, c.optimizer) == (
        111550159,
        320,
        64,
        40,
        10,
        "adamw",
    )
    assert (c.lr_schedule, c.warmup_epochs, c.folds, c.fold_holdout, c.merge_models) == (
        "constant",
        0,
        10,
        True,
        2,
    )
    a = c.aug
    assert (a.color_jitter_p, a.brightness, a.contrast, a.saturation, a.hue) == (0.8, 0.4, 0.4, 0.4, 0.1)
    assert (a.grayscale, a.grayscale_p, a.cutmix, a.rrc, a.hflip) == (True, 0.2, True, True, True)
    assert spec.load("recipe-004").space["backbone"].choices == (
        "resnest200e.in1k",
        "resnext101_64x4d.tv_in1k",
    )


def test_recipe_001_is_its_authors_sgd_recipe_rotating_nearest_and_keeping_the_last_batch() -> None:
    study = spec.load("recipe-001")
    assert study.space["backbone"].choices == ("resnext50_32x4d.tv_in1k", "resnet50.tv_in1k")
    c = resolved("recipe-001", backbone="resnext50_32x4d.tv_in1k")
    assert (c.aug.rotation_deg, c.aug.rotation_interpolation, c.drop_last) == (15, "nearest", False)
    assert (c.optimizer, c.momentum, c.lr_backbone, c.lr_head) == ("sgd", 0.9, 1e-3, 1e-3)
    assert c.weight_decay == 0.0
    assert (c.batch_size, c.epochs, c.lr_schedule, c.warmup_epochs, c.checkpoint) == (
        32,
        25,
        "constant",
        0,
        "val_acc",
    )
    a = c.aug
    assert (a.translate_frac, a.brightness, a.contrast, a.saturation, a.hue) == (0.1, 0.3, 0.3, 0.3, 0.0)
    assert (a.rrc, a.hflip, a.erasing, a.erasing_p, c.eval.crop_pct) == (True, True, True, 0.5, 0.875)


def test_cells_round_trip_and_set_wins_over_them() -> None:
    study = spec.load("recipe-002")
    again = spec.parse(spec.to_document(study), study.path)
    assert again.cells == study.cells and again.space.keys() == study.space.keys()
    pinned = study.with_overrides({"cell": "contrastive", "backbone": "test_resnet"})
    assert pinned.space["cell"].choices == ("contrastive",)
    c = pinned.resolve({"cell": "contrastive"})
    assert (c.backbone, c.batch_size, c.cosine_partners) == ("test_resnet", 32, "dataset")


def test_a_cell_with_an_unknown_key_names_it() -> None:
    raw = {"name": "x", "data": {"root": "data/"}, "cells": {"a": {"lr_bakbone": 0.1}}}
    with pytest.raises(SweeperError, match=r"cells\.a\.lr_bakbone: unknown parameter.*did you mean"):
        spec.parse(raw, Path("x.yaml"))


@pytest.mark.slow
def test_check_json_shows_recipe_000s_lr_and_its_cells_by_tensor_name() -> None:
    import json

    doc = json.loads(sweeper("check", "recipe-000", "--json"))["study"]
    assert doc["fixed"]["lr_backbone"] == doc["fixed"]["lr_head"] == 0.001
    assert doc["cells"]["freeze"]["freeze"] == list(TENSORS)
    assert doc["cells"]["boost"]["train_only"] == list(TENSORS)
    assert doc["cells"]["boost"]["grad_clip_tensors"] == [TENSORS[0]]


def test_a_cell_can_be_enqueued_by_name_and_a_wrong_name_is_refused() -> None:
    raw = yaml.safe_load((REPO / "sweeper" / "studies" / "recipe-000.yaml").read_text())
    assert spec.parse({**raw, "enqueue": [{"cell": "boost"}]}, Path("x.yaml")).enqueue == ({"cell": "boost"},)
    with pytest.raises(SweeperError, match=r"enqueue\[0\]\.cell: 'bost' is outside the searched dimension"):
        spec.parse({**raw, "enqueue": [{"cell": "bost"}]}, Path("x.yaml"))
