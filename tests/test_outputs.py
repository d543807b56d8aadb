"""Outputs and study files checked before anything runs: --out, model folders, encodings, modes, and
export-best's pinned study for every kind of study."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import torch

from sweeper.cli.app import out_dir, out_file
from sweeper.errors import SweeperError
from sweeper.results import views
from sweeper.store import record as rec
from sweeper.study import spec as spec_lib
from sweeper.submit import predictor
from sweeper.train import artifacts


def test_out_dir_refuses_a_file_and_makes_a_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SweeperError, match=r"--out .*taken: is a file; name a folder"):
        out_dir(tmp_path / "taken")
    assert out_dir(tmp_path / "a" / "b").is_dir()


def test_out_file_refuses_a_folder_and_a_folder_it_cannot_make(tmp_path: Path) -> None:
    with pytest.raises(SweeperError, match=r"is a folder; name the file to write"):
        out_file(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SweeperError, match=r"its folder .*: is a file"):
        out_file(tmp_path / "file" / "out.csv")
    assert out_file(tmp_path / "new" / "p.csv").parent.is_dir()


def test_a_study_file_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\nepochs: 1\n".encode("latin-1"))
    with pytest.raises(SweeperError, match=r"latin.yaml: line 1: not UTF-8 text \(byte 0xe9\)"):
        spec_lib.load(str(path))


def test_weights_are_written_with_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        artifacts.save_weights(tmp_path / "m.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o640


def test_a_model_folder_without_its_weights_is_one_line(tmp_path: Path) -> None:
    cfg = spec_lib.load("quickstart").resolve({})
    artifacts.write_config(tmp_path / "config.yaml", cfg, ("a", "b"), {"input_size": (3, 32, 32)}, {})
    with pytest.raises(SweeperError, match=r"names model.safetensors, which is not there"):
        predictor.Predictor.from_folder(tmp_path)


@pytest.mark.parametrize("name", ["ablation-aug", "quickstart-tradeoff", "quickstart", "recipe-004"])
def test_export_best_writes_a_study_that_check_accepts(name: str, tmp_path: Path) -> None:
    spec = spec_lib.load(name)
    params = {
        k: d.choices[0] if d.kind in ("choice",) else (d.low if d.low is not None else True)
        for k, d in spec.space.items()
        if not d.when
    }
    cfg = spec.resolve(params)
    trial = optuna.trial.create_trial(
        value=0.5, params={}, distributions={}, user_attrs={rec.CONFIG: rec.config_json(cfg)}
    )
    doc = views.best_document(rec.Recorded(optuna.create_study(), spec, None), trial)
    pinned = spec_lib.parse(doc, tmp_path / "pinned.yaml")
    assert pinned.space == {} and pinned.design is None and not pinned.multi
    assert pinned.resolve({}).flat() == {**cfg.flat(), "epochs": cfg.epochs}
