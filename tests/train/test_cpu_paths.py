"""The options that pay on CUDA (channels_last, device_aug) run on the CPU too, and change no numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.data import images as data_lib
from sweeper.train import fit as train
from tests.helpers.builders import trial_config

pytestmark = pytest.mark.slow  # two real (tiny) trainings


def test_channels_last_and_device_aug_train_the_same_model_on_the_cpu(image_folder: Path) -> None:
    ds = data_lib.scan(image_folder)
    plain = train.run_trial(trial_config(epochs=1, channels_last=False, device_aug=False), ds)
    fast = train.run_trial(trial_config(epochs=1, channels_last=True, device_aug=True), ds)
    for key in ("train_loss", "val_loss", "val_acc"):
        assert fast.best[key] == pytest.approx(plain.best[key], rel=1e-4, abs=1e-5), key


def test_bf16_autocast_trains_on_the_cpu_as_on_cuda(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA numerics (bf16 autocast in training and evaluation) where there is no GPU."""
    import torch

    from sweeper.data import loaders

    ds = data_lib.scan(image_folder)
    plain = train.run_trial(trial_config(epochs=1), ds)
    monkeypatch.setenv("SWEEPER_CPU_BF16", "1")
    with loaders.autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16  # it is on
    half = train.run_trial(trial_config(epochs=1), ds)
    for key in ("train_loss", "val_loss"):  # bf16 keeps 8 bits of mantissa: close, not equal
        assert half.best[key] == pytest.approx(plain.best[key], rel=0.05), key
    assert half.best["train_loss"] != plain.best["train_loss"]  # it really ran in bf16
    assert all(v.dtype == torch.float32 for v in half.state_dict.values() if v.is_floating_point())
