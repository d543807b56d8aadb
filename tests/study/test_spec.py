from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.errors import SweeperError
from sweeper.study import spec
from tests.helpers.builders import load_study

BASE = """
name: s
data: {root: builtin:digits}
epochs: 5
fixed: {backbone: resnet18, aug: {cutmix: true}}
space:
  lr_head: {float: [1.0e-4, 1.0e-2], log: true}
  freeze_depth: {int: [0, 3]}
  batch_size: {choice: [32, 64]}
  aug.mixup: {bool: true}
"""


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(SweeperError) as e:
        load_study(tmp_path, text)
    msg = str(e.value)
    assert "\n" not in msg
    assert "s.yaml" in msg  # every error names the file
    return msg


def test_valid_study_parses_fixed_nested_and_dotted(tmp_path: Path) -> None:
    s = load_study(tmp_path, BASE)
    assert s.fixed == {"backbone": "resnet18", "aug.cutmix": True}
    assert set(s.space) == {"lr_head", "freeze_depth", "batch_size", "aug.mixup"}
    assert s.space["lr_head"].log and s.space["freeze_depth"].kind == "int"
    assert s.metric == "val_acc" and s.direction == "maximize"


def test_unknown_top_key_suggests(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE + "epoch: 3\n")
    assert "epoch" in msg and "did you mean 'epochs'" in msg


def test_unknown_param_suggests(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE.replace("lr_head:", "lr_haed:"))
    assert "space.lr_haed" in msg and "lr_head" in msg


def test_unknown_nested_aug_param(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE.replace("cutmix: true", "cutmx: true"))
    assert "fixed.aug.cutmx" in msg and "aug.cutmix" in msg


def test_wrong_type_names_key_and_allowed(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE.replace("backbone: resnet18", "backbone: 3"))
    assert "fixed.backbone" in msg and "expected str" in msg


def test_literal_choice_lists_allowed(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE.replace("backbone: resnet18", "optimizer: lion"))
    assert "fixed.optimizer" in msg and "'adamw'" in msg


@pytest.mark.parametrize(
    ("dim", "words"),
    [
        ("{float: [1.0e-2, 1.0e-4]}", "low < high"),
        ("{float: [0.0, 1.0], log: true}", "low > 0"),
        ("{float: [1, 2], int: [1, 2]}", "exactly one"),
        ("{float: [1.0e-4]}", "[low, high]"),
        ("{float: [1.0e-4, 1.0e-2], logg: true}", "did you mean 'log'"),
        ("[1, 2]", "mapping"),
    ],
)
def test_impossible_ranges(tmp_path: Path, dim: str, words: str) -> None:
    msg = error_of(tmp_path, BASE.replace("{float: [1.0e-4, 1.0e-2], log: true}", dim))
    assert "space.lr_head" in msg and words in msg


def test_choice_values_are_type_checked(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE.replace("[32, 64]", "[32, big]"))
    assert "space.batch_size" in msg and "'big'" in msg


def test_param_both_fixed_and_searched(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE.replace("backbone: resnet18", "lr_head: 0.1"))
    assert "either fixed or searched" in msg


def test_unknown_sampler_and_pruner(tmp_path: Path) -> None:
    assert "did you mean 'tpe'" in error_of(tmp_path, BASE + "sampler: tpee\n")
    assert "hyperband" in error_of(tmp_path, BASE + "pruner: {name: hyperbnd}\n")


def test_grid_sampler_needs_discrete_dims(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE + "sampler: grid\n")
    assert "space.lr_head" in msg and "step" in msg


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "name: s\ndata: {root: x\nepochs: 3\n")
    assert "not valid YAML" in msg and "line" in msg


def test_unknown_study_lists_available(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "quickstart.yaml").write_text(BASE)
    (tmp_path / "ablation-aug.yaml").write_text(BASE)
    monkeypatch.setenv("SWEEPER_STUDIES_DIR", str(tmp_path))
    with pytest.raises(SweeperError, match="did you mean 'quickstart'.*available.*ablation-aug, quickstart"):
        spec.find("quickstrat")


def test_overrides_pin_a_dimension_and_cap_epochs(tmp_path: Path) -> None:
    s = load_study(tmp_path, BASE).with_overrides({"batch_size": 16, "backbone": "resnet34"}, epochs=2)
    assert "batch_size" not in s.space and s.fixed["batch_size"] == 16
    assert s.fixed["backbone"] == "resnet34" and s.epochs == 2
    cfg = s.resolve({"lr_head": 3e-3, "freeze_depth": 1, "aug.mixup": True})
    assert (cfg.batch_size, cfg.backbone, cfg.epochs, cfg.lr_head, cfg.freeze_depth) == (
        16,
        "resnet34",
        2,
        3e-3,
        1,
    )
    assert cfg.aug.mixup and cfg.aug.cutmix


def test_override_errors(tmp_path: Path) -> None:
    s = load_study(tmp_path, BASE)
    with pytest.raises(SweeperError, match="unknown parameter 'bakcbone'.*backbone"):
        s.with_overrides({"bakcbone": "x"})
    with pytest.raises(SweeperError, match="batch_size"):
        s.with_overrides({"batch_size": "many"})


def test_flat_config_round_trips() -> None:
    cfg = spec.build_config({"backbone": "x", "aug.rrc_scale": (0.5, 1.0), "eval.tta": True})
    flat = cfg.flat()
    assert flat["aug.rrc_scale"] == (0.5, 1.0) and flat["eval.tta"] is True
    assert spec.build_config(flat) == cfg


def test_shipped_studies_are_valid() -> None:
    paths = spec.available_studies()
    assert {"quickstart", "ablation-aug"} <= {p.stem for p in paths}
    for p in paths:
        spec.load(str(p))
