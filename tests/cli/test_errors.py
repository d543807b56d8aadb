"""Each bad input: one line on stderr naming the problem, a non-zero exit code, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.builders import TINY

pytestmark = pytest.mark.slow


def assert_one_line_error(r, *words: str) -> None:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "INFO" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def run(cli, data: Path | str, *extra: str):
    return cli(
        "run-study", "quickstart", "--trials", "1", "--data", str(data), "--epochs", "1", *TINY, *extra
    )


def test_missing_data_root(cli, tmp_path: Path) -> None:
    assert_one_line_error(run(cli, tmp_path / "nowhere"), "nowhere does not exist", "--data")


def test_train_and_val_classes_differ(cli, image_folder: Path) -> None:
    shutil.rmtree(image_folder / "val" / "insect")
    assert_one_line_error(run(cli, image_folder), "only in train: ['insect']")


def test_empty_class_folder(cli, image_folder: Path) -> None:
    shutil.rmtree(image_folder / "val" / "plant")
    (image_folder / "val" / "plant").mkdir()
    assert_one_line_error(run(cli, image_folder), "val/plant is empty")


def test_unreadable_image_named(cli, image_folder: Path) -> None:
    (image_folder / "train" / "plant" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    assert_one_line_error(run(cli, image_folder), "unreadable image", "corrupt.png")


def test_unknown_timm_model(cli, image_folder: Path) -> None:
    assert_one_line_error(
        run(cli, image_folder, "--set", "backbone=resnext50_32x4"), "unknown timm model", "'resnext50_32x4d'"
    )


def test_unknown_study(cli) -> None:
    r = cli("run-study", "ablation_aug", "--trials", "1")
    assert_one_line_error(r, "unknown study 'ablation_aug'", "did you mean 'ablation-aug'", "quickstart")


def test_malformed_study_file(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata: {root: builtin:digits}\nspace:\n  lr_head: {float: [0.1, 0.01]}\n")
    assert_one_line_error(cli("check", str(bad)), "bad.yaml", "space.lr_head", "low < high")
    bad.write_text("name: bad\ndata: [unclosed\n")
    assert_one_line_error(cli("run-study", str(bad), "--trials", "1"), "bad.yaml", "not valid YAML")


def test_pretrained_unavailable(cli, image_folder: Path) -> None:
    r = run(cli, image_folder, "--set", "pretrained=true")
    assert_one_line_error(
        r, "test_resnet: pretrained weights are not in the Hugging Face hub cache", "weights_file"
    )


def test_bad_set_syntax(cli, image_folder: Path) -> None:
    assert_one_line_error(run(cli, image_folder, "--set", "lr_head"), "expected KEY=VALUE")
