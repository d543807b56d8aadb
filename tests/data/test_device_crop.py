"""The training crop resized on the device gives torchvision's pixels, drawn from the same random stream."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from sweeper.data import augment, device_crop, loaders
from sweeper.data import images as data
from sweeper.study.config import AugConfig
from tests.helpers.builders import data_config, fit_config

CPU = torch.device("cpu")
SHAPES = [(305, 406), (406, 305), (90, 60), (224, 224), (500, 500), (41, 300), (1200, 1600)]


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path / "sweeper-data"))


def _photos(seed: int) -> list[torch.Tensor]:
    """Smooth color fields plus noise in many shapes, laid out channels-last like a decoded file."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in SHAPES:
        field = torch.nn.functional.interpolate(
            torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g) * 255, (h, w)
        )
        noisy = field[0] + torch.randn(3, h, w, generator=g) * 25
        out.append(noisy.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().permute(2, 0, 1))
    return out


def _both_ways(pipeline: T.Compose, imgs: list[torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch torchvision makes image by image, and the one the device makes from the same draws."""
    cut = device_crop.split(pipeline)
    assert cut is not None
    host, rest, size, interpolation = cut
    torch.manual_seed(seed)
    reference = torch.stack([pipeline(img) for img in imgs])
    torch.manual_seed(seed)
    crops = device_crop.stack([host(img) for img in imgs])
    return reference, device_crop.DeviceCrop(size, interpolation, augment.BatchTail(rest), CPU)(crops)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_resized_crops_and_flips_are_torchvisions_pixels(interpolation: str, seed: int) -> None:
    aug = AugConfig(hflip=True, vflip=True, vflip_p=0.5)
    pipeline = augment.train_transform(aug, data_config(224, interpolation), normalize=False)
    reference, moved = _both_ways(pipeline, _photos(seed), seed)
    assert moved.shape == reference.shape == (len(SHAPES), 3, 224, 224)
    assert torch.equal(moved, reference)  # bit for bit: torch's fixed-point weights, uint8 between passes


def test_the_resize_keeps_full_precision_under_the_training_loops_autocast_and_tf32() -> None:
    pipeline = augment.train_transform(AugConfig(), data_config(224, "bicubic"), normalize=False)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # what setup_model allows on CUDA, and lower
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            small = [img for img in _photos(3) if max(img.shape) <= 2 * 224]  # float32 passes
            reference, moved = _both_ways(pipeline, small, 3)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(moved, reference)


def test_a_plain_resize_and_the_normalized_tail_match_too() -> None:
    pipeline = augment.train_transform(AugConfig(rrc=False), data_config(64, "bicubic"))
    reference, moved = _both_ways(pipeline, _photos(2), 0)
    assert moved.dtype == torch.float32 and torch.equal(moved, reference)


def test_pipelines_with_other_uint8_ops_or_filters_stay_in_the_workers() -> None:
    cfg = data_config(32, "bicubic")
    assert device_crop.split(augment.train_transform(AugConfig(color_jitter=True), cfg)) is None
    assert device_crop.split(augment.train_transform(AugConfig(rotation=True), cfg)) is None
    assert device_crop.split(augment.train_transform(AugConfig(), data_config(32, "nearest"))) is None
    assert device_crop.split(augment.train_transform(AugConfig(erasing=True), cfg)) is not None  # float op


def test_a_box_over_twice_the_output_is_resized_in_the_worker_and_only_flipped_on_the_device() -> None:
    big = _photos(4)[-1]  # 1200 x 1600
    pipeline = augment.train_transform(AugConfig(rrc_scale=(0.9, 1.0)), data_config(224, "bicubic"))
    cut = device_crop.split(pipeline)
    assert cut is not None
    crop = cut[0](big)
    assert crop.pixels.shape == (3, 224, 224) and crop.plan[:2].tolist() == [224, 224]
    small = cut[0](_photos(4)[0])  # 305 x 406: sent as cut
    assert max(small.pixels.shape) <= 406 and small.plan[:2].tolist() == list(small.pixels.shape[1:])


def test_a_batch_of_crops_travels_packed_and_is_laid_out_padded_with_zeros() -> None:
    a = torch.arange(30, dtype=torch.uint8).view(2, 5, 3).permute(2, 0, 1)  # [3, 2, 5], as decoded
    b = torch.full((3, 4, 3), 9, dtype=torch.uint8)
    plans_in = [torch.tensor([2, 5, 1, 0]), torch.tensor([4, 3, 0, 1])]
    (packed, plans), labels = device_crop.collate(
        [(device_crop.Crop(a, plans_in[0]), 3), (device_crop.Crop(b, plans_in[1]), 1)]
    )
    assert packed.shape == (2 * 5 * 3 + 4 * 3 * 3,) and labels.tolist() == [3, 1]
    assert plans.tolist() == [[2, 5, 1, 0], [4, 3, 0, 1]]
    pixels = device_crop.unpack(packed, plans)
    assert pixels.shape == (2, 3, 4, 5)
    assert torch.equal(pixels[0, :, :2], a) and pixels[0, :, 2:].eq(0).all()
    assert torch.equal(pixels[1, :, :, :3], b) and pixels[1, :, :, 3:].eq(0).all()


@pytest.mark.parametrize(
    ("workers", "partners"), [(0, "batch"), (0, "dataset"), pytest.param(1, "batch", marks=pytest.mark.slow)]
)
def test_device_aug_batches_equal_the_cpu_pipelines_for_the_same_seed(
    image_folder: Path, workers: int, partners: str
) -> None:
    """A trial's own loader, device_aug on and off: the same training batches, only the work moved
    (with a worker: crops packed into shared memory there, its seed from the loader's generator; with
    partners drawn from the dataset: pairs of crops, interleaved)."""
    split = data.scan(image_folder).train
    aug = AugConfig(hflip=True, vflip=True)
    cfg = fit_config(aug=aug, num_workers=workers, cosine_partners=partners, cosine_weight=1.0)
    batches = []
    for on in (False, True):
        run = dataclasses.replace(cfg, device_aug=on)
        pipes = loaders.Pipelines(run, data_config(32, "bicubic"), CPU, split)
        assert isinstance(pipes.train_tail, device_crop.DeviceCrop) is on
        dl = loaders.loader(pipes.train(split), run, train=True, device=CPU, tail=pipes.train_tail)
        torch.manual_seed(0)  # the transforms' draws (no workers: in this process)
        batches.append(list(dl))
    assert len(batches[0]) == len(batches[1]) > 1
    for (x, y), (xd, yd) in zip(*batches, strict=True):
        assert torch.equal(y, yd) and torch.equal(x, xd)


def test_weights_are_interpolations_rows() -> None:
    """Each output pixel's weights sum to one and reach no pixel beyond its image's size."""
    w = device_crop.weights(torch.tensor([300, 100, 20]), 64, InterpolationMode.BICUBIC, span=300)
    assert w.shape == (3, 64, 300)
    assert torch.allclose(w.sum(-1), torch.ones(3, 64), atol=1e-3)
    assert w[1, :, 100:].eq(0).all() and w[2, :, 20:].eq(0).all()
