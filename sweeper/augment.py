"""Train and eval transforms from an AugConfig, built from torchvision.transforms.v2 and timm's Mixup.

Transforms take uint8 ``[3, H, W]`` tensors (decoded files or cache rows) and return normalized float
tensors. Mean, std, interpolation and crop_pct come from the model's data config, never typed twice.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from sweeper.spec import AugConfig


def _interp(name: str) -> InterpolationMode:
    return {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(
        name, InterpolationMode.BILINEAR
    )


def train_transform(aug: AugConfig, data_cfg: dict[str, Any]) -> T.Compose:
    """The training pipeline: geometry, then color, then policy augmentations, then normalize/erase."""
    size = data_cfg["input_size"][-1]
    interp = _interp(data_cfg.get("interpolation", "bilinear"))
    ops: list[Any] = []
    if aug.rrc:
        ops.append(T.RandomResizedCrop(size, scale=aug.rrc_scale, ratio=aug.rrc_ratio, interpolation=interp))
    else:
        ops.append(T.Resize((size, size), interpolation=interp))
    if aug.hflip:
        ops.append(T.RandomHorizontalFlip(aug.hflip_p))
    if aug.vflip:
        ops.append(T.RandomVerticalFlip(aug.vflip_p))
    if aug.rotation or aug.translate:
        ops.append(
            T.RandomAffine(
                degrees=aug.rotation_deg if aug.rotation else 0.0,
                translate=(aug.translate_frac, aug.translate_frac) if aug.translate else None,
                interpolation=InterpolationMode.BILINEAR,  # grid-sampled ops have no bicubic on tensors
            )
        )
    if aug.color_jitter:
        ops.append(T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue))
    if aug.grayscale:
        ops.append(T.RandomGrayscale(aug.grayscale_p))
    if aug.blur:
        ops.append(T.RandomApply([T.GaussianBlur(aug.blur_kernel)], p=aug.blur_p))
    if aug.sharpness:
        ops.append(T.RandomAdjustSharpness(aug.sharpness_factor, p=aug.sharpness_p))
    if aug.randaugment:
        ops.append(T.RandAugment(num_ops=aug.randaugment_n, magnitude=aug.randaugment_m))
    if aug.augmix:
        ops.append(T.AugMix(severity=aug.augmix_severity))
    ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(data_cfg["mean"], data_cfg["std"])]
    if aug.erasing:
        ops.append(T.RandomErasing(p=aug.erasing_p))
    return T.Compose(ops)


def eval_transform(data_cfg: dict[str, Any], crop_pct: float | None = None) -> T.Compose:
    """Resize the short side to size / crop_pct, then center-crop to size: timm's eval convention."""
    size = data_cfg["input_size"][-1]
    pct = crop_pct if crop_pct is not None else data_cfg.get("crop_pct", 0.875)
    return T.Compose(
        [
            T.Resize(
                int(round(size / pct)), interpolation=_interp(data_cfg.get("interpolation", "bilinear"))
            ),
            T.CenterCrop(size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(data_cfg["mean"], data_cfg["std"]),
        ]
    )


def mixer(aug: AugConfig, label_smoothing: float, num_classes: int):
    """timm's Mixup/CutMix as one batch op returning soft targets, or None when both are off."""
    if not (aug.mixup or aug.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=aug.mixup_alpha if aug.mixup else 0.0,
        cutmix_alpha=aug.cutmix_alpha if aug.cutmix else 0.0,
        prob=aug.mix_prob,
        switch_prob=0.5,  # when both are on, half the mixed batches use each
        mode="batch",
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


class BatchTail:
    """The tail of a pipeline from ``ToDtype`` on, applied to a whole batch on the training device.

    DataLoader workers then send uint8 batches (a quarter of the bytes of float32) and skip the
    float math. Elementwise ops run once per batch; random ones (erasing) run per image so each
    image draws its own parameters, as it would in a worker.
    """

    def __init__(self, ops: list[Any]) -> None:
        self.ops = ops

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op(x) if isinstance(op, (T.ToDtype, T.Normalize)) else torch.stack([op(img) for img in x])
        return x


def split_for_device(pipeline: T.Compose) -> tuple[T.Compose, BatchTail]:
    """Split a pipeline into the per-image uint8 part (workers) and the batch tail (device)."""
    ops = list(pipeline.transforms)
    cut = next(i for i, op in enumerate(ops) if isinstance(op, T.ToDtype))
    return T.Compose(ops[:cut]), BatchTail(ops[cut:])
