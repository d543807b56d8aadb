"""Data loading and device setup of a trial: the cache in the loop, memory format, device-side transforms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sweeper.data import augment, loaders, tensors
from sweeper.data import images as data
from sweeper.study import spec
from sweeper.train import fit as train
from tests.helpers.builders import data_config, fit_config

CPU = torch.device("cpu")


def test_channels_last_auto_is_on_for_cuda_but_not_for_slow_models() -> None:
    cuda = torch.device("cuda")
    assert loaders.use_channels_last(fit_config(), cuda)
    assert not loaders.use_channels_last(fit_config(backbone="resnest50d"), cuda)
    assert not loaders.use_channels_last(fit_config(), CPU)
    assert loaders.use_channels_last(fit_config(channels_last=True), CPU)
    assert not loaders.use_channels_last(fit_config(channels_last=False), cuda)


def test_channels_last_option_is_checked_in_study_files() -> None:
    assert spec.coerce("channels_last", "auto") == "auto" and spec.coerce("channels_last", False) is False
    with pytest.raises(ValueError, match="'auto'"):
        spec.coerce("channels_last", "yes")


def test_device_tail_gives_the_tensors_of_the_per_image_pipeline(image_folder: Path) -> None:
    ds = data.scan(image_folder)
    tf = augment.eval_transform(data_config(interpolation="bicubic", crop_pct=0.9))
    host, tail = augment.split_for_device(tf)
    plain = loaders.loader(tensors.ImageDataset(ds.val.files, ds.val.labels, tf), fit_config(), False, CPU)
    split = loaders.loader(
        tensors.ImageDataset(ds.val.files, ds.val.labels, host), fit_config(), False, CPU, tail=tail
    )
    for (a, ya), (b, yb) in zip(plain, split, strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b) and torch.equal(ya, yb)


def test_device_tail_erases_each_image_on_its_own() -> None:
    torch.manual_seed(0)
    tail = augment.BatchTail([augment.T.RandomErasing(p=1.0, value=0)])
    out = tail(torch.ones(16, 3, 32, 32))
    holes = (out == 0).flatten(1)
    assert len({tuple(h.nonzero().flatten().tolist()) for h in holes}) > 1


def test_loader_sends_batches_in_the_chosen_memory_format(image_folder: Path) -> None:
    ds = data.scan(image_folder)
    tf = augment.eval_transform(data_config(interpolation="bicubic", crop_pct=0.9))
    ds_ = tensors.ImageDataset(ds.val.files, ds.val.labels, tf)
    dl = loaders.loader(ds_, fit_config(channels_last=True), False, CPU)
    x, _ = next(iter(dl))
    assert x.is_contiguous(memory_format=torch.channels_last) and len(dl) == 2


@pytest.mark.slow
def test_a_trial_gives_the_same_result_whether_it_builds_the_cache_or_maps_it(image_folder: Path) -> None:
    ds = data.scan(image_folder)
    cfg = dataclasses.replace(fit_config(), aug=spec.AugConfig(erasing=True))
    cache_dir = data.data_dir() / "cache"
    before = set(cache_dir.iterdir()) if cache_dir.exists() else set()
    building = train.run_trial(cfg, ds, device=CPU)
    assert len(set(cache_dir.iterdir()) - before) >= 1  # it built one
    mapping = train.run_trial(cfg, ds, device=CPU)
    assert building.history[-1]["train_loss"] == mapping.history[-1]["train_loss"]
    assert building.history[-1]["val_loss"] == mapping.history[-1]["val_loss"]
    # worker processes map the cache themselves; device_aug moves the float math out of them
    fast = train.run_trial(
        dataclasses.replace(cfg, num_workers=1, device_aug=True, channels_last=True), ds, device=CPU
    )
    assert fast.history[-1]["val_acc"] >= 0.0 and len(fast.history) == 2
