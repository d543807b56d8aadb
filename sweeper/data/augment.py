"""Train and eval transforms from an AugConfig, built from torchvision.transforms.v2 and timm's Mixup.

Transforms take uint8 ``[3, H, W]`` tensors (decoded files or cache rows) and return float tensors in
[0, 1], normalized unless asked not to. Mean, std, interpolation and crop_pct come from the model's data
config, never typed twice. The eval transform is :mod:`sweeper.servable.transforms` (re-exported here):
the code every logged model carries, so serving and training evaluate an image alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from sweeper.servable import transforms as servable_tf
from sweeper.servable.transforms import interp_mode, interpolation, to_float
from sweeper.study.config import AugConfig

# The eval transform lives with the model it serves (every logged model carries it); its names here too.
EvalCrop = servable_tf.EvalCrop
eval_geometry = servable_tf.eval_geometry
eval_transform = servable_tf.eval_transform
_interp = interp_mode  # the old private name, which bench/data_pipeline.py uses


def train_transform(aug: AugConfig, data_cfg: dict[str, Any], normalize: bool = True) -> T.Compose:
    """The training pipeline: geometry, then color, then policy augmentations, then normalize/erase."""
    ops = _geometry(aug, data_cfg["input_size"][-1], interpolation(data_cfg))
    if aug.color_jitter:
        jitter = T.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)
        ops.append(jitter if aug.color_jitter_p >= 1 else T.RandomApply([jitter], p=aug.color_jitter_p))
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
    ops += to_float(data_cfg, normalize)
    if aug.erasing:
        ops.append(T.RandomErasing(p=aug.erasing_p))
    return T.Compose(ops)


def _geometry(aug: AugConfig, size: int, interp: InterpolationMode) -> list[Any]:
    """Crop or resize to ``size``, flips, rotation, translation: torchvision's own ops, as the recipes
    ran them (RandomRotation, then RandomAffine to translate; RandomAffine(degrees=d) turns the other
    way than RandomRotation(d) for the same draw)."""
    ops: list[Any] = []
    if aug.rrc:
        ops.append(T.RandomResizedCrop(size, scale=aug.rrc_scale, ratio=aug.rrc_ratio, interpolation=interp))
    else:
        ops.append(T.Resize((size, size), interpolation=interp))
    if aug.hflip:
        ops.append(T.RandomHorizontalFlip(aug.hflip_p))
    if aug.vflip:
        ops.append(T.RandomVerticalFlip(aug.vflip_p))
    resample = _interp(aug.rotation_interpolation)  # no bicubic for grid-sampled tensors
    if aug.rotation:
        ops.append(T.RandomRotation(aug.rotation_deg, interpolation=resample))
    if aug.translate:
        ops.append(
            T.RandomAffine(0.0, translate=(aug.translate_frac, aug.translate_frac), interpolation=resample)
        )
    return ops


def after_eval_crop(data_cfg: dict[str, Any], normalize: bool = True) -> T.Compose:
    """What :func:`eval_transform` does after its :class:`EvalCrop`: for images cached as it ends."""
    return T.Compose(to_float(data_cfg, normalize))


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


def split_for_device(pipeline: T.Compose) -> tuple[T.Compose | T.Identity, BatchTail]:
    """Split a pipeline into the per-image uint8 part (workers) and the batch tail (device)."""
    ops = list(pipeline.transforms)
    cut = next(i for i, op in enumerate(ops) if isinstance(op, T.ToDtype))
    return T.Compose(ops[:cut]) if cut else T.Identity(), BatchTail(ops[cut:])
