"""A model folder refit-best wrote, opened for prediction: its weights must all be there."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.errors import SweeperError
from sweeper.study import spec as spec_lib
from sweeper.submit import predictor
from sweeper.train import artifacts


def test_a_model_folder_without_its_weights_is_one_line(tmp_path: Path) -> None:
    cfg = spec_lib.load("quickstart").resolve({})
    artifacts.write_config(tmp_path / "config.yaml", cfg, ("a", "b"), {"input_size": (3, 32, 32)}, {})
    with pytest.raises(SweeperError, match=r"names model.safetensors, which is not there"):
        predictor.Predictor.from_folder(tmp_path)
