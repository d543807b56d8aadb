"""The files beside a result: weights readable as the user's umask says."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sweeper.train import artifacts


def test_weights_are_written_with_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        artifacts.save_weights(tmp_path / "m.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o640
