"""Train and eval transforms from an AugConfig, built from torchvision.transforms.v2 and timm's Mixup.

Transforms take uint8 ``[3, H, W]`` tensors (decoded files or cache rows) and return float tensors in
[0, 1], normalized unless asked not to. Mean, std, interpolation and crop_pct come from the model's data
config, never typed twice; the eval geometry is timm's own (``transforms_imagenet_eval``): resize to
``floor(size / crop_pct)``, then ``center`` / ``squash`` / ``border`` as timm's ``crop_mode`` says.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from sweeper.study.config import AugConfig, EvalConfig


def _interp(name: str) -> InterpolationMode:
    from timm.data.transforms import str_to_interp_mode

    return str_to_interp_mode(name)


def interpolation(data_cfg: dict[str, Any]) -> InterpolationMode:
    """The model's interpolation, as timm maps its name."""
    return _interp(data_cfg.get("interpolation", "bilinear"))


def _to_float(data_cfg: dict[str, Any], normalize: bool) -> list[Any]:
    """uint8 -> float in [0, 1], then the model's mean/std unless ``normalize`` is off."""
    ops: list[Any] = [T.ToDtype(torch.float32, scale=True)]
    return ops + [T.Normalize(data_cfg["mean"], data_cfg["std"])] if normalize else ops


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
    ops += _to_float(data_cfg, normalize)
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


def eval_geometry(data_cfg: dict[str, Any], ev: EvalConfig | None = None) -> dict[str, Any]:
    """The eval's size, crop_pct, crop_mode and interpolation: ``ev`` where set, else the model's."""
    ev = ev or EvalConfig()
    return {
        "img_size": ev.img_size or data_cfg["input_size"][-1],
        "crop_pct": ev.crop_pct or data_cfg.get("crop_pct") or 0.875,
        "crop_mode": ev.crop_mode or data_cfg.get("crop_mode") or "center",
        "interpolation": data_cfg.get("interpolation", "bilinear"),
    }


def eval_transform(
    data_cfg: dict[str, Any], ev: EvalConfig | None = None, normalize: bool = True
) -> T.Compose:
    """timm's eval geometry (its own ops, so sizes floor and crop modes match timm), then to float."""

    return T.Compose([*EvalCrop(data_cfg, ev).ops, *_to_float(data_cfg, normalize)])


def after_eval_crop(data_cfg: dict[str, Any], normalize: bool = True) -> T.Compose:
    """What :func:`eval_transform` does after its :class:`EvalCrop`: for images cached as it ends."""
    return T.Compose(_to_float(data_cfg, normalize))


class EvalCrop:
    """The uint8 geometry of :func:`eval_transform` (timm's resize, then crop or pad) as one op.

    Deterministic, so the decoded-image cache can store its output for the images a run evaluates:
    their pixels are then exactly those ``predict`` computes from the files. Also a cache resizer
    (``size``, ``interpolation``, ``antialias``, ``max_size``; ``key`` names the whole geometry).
    """

    antialias, max_size = True, None

    def __init__(self, data_cfg: dict[str, Any], ev: EvalConfig | None = None) -> None:
        from timm.data.transforms import CenterCropOrPad
        from timm.data.transforms_factory import transforms_imagenet_eval

        geo = eval_geometry(data_cfg, ev)
        pipeline = transforms_imagenet_eval(**geo, mean=data_cfg["mean"], use_prefetcher=True)
        timm_ops = pipeline.transforms[:-1]  # all but its to-tensor step
        self.ops = [
            _CenterCropOrPad(op.size, op.fill) if isinstance(op, CenterCropOrPad) else op for op in timm_ops
        ]
        self.size = [geo["img_size"], geo["img_size"]]  # every crop mode ends at img_size x img_size
        self.interpolation = _interp(geo["interpolation"])
        self.key = json.dumps({"eval_crop": geo, "ops": repr(self.ops)})

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            img = op(img)
        return img

    def __repr__(self) -> str:
        return f"EvalCrop({self.key})"


class _CenterCropOrPad:
    """timm's ``CenterCropOrPad`` (``crop_mode: border``) for tensors: pad with the mean color, crop."""

    def __init__(self, size: tuple[int, int], fill: int | Sequence[int]) -> None:
        self.size, self.fill = tuple(size), fill

    def __repr__(self) -> str:
        return f"CenterCropOrPad(size={self.size}, fill={self.fill})"

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        (h, w), (th, tw) = img.shape[-2:], self.size
        if th > h or tw > w:
            dw, dh = max(tw - w, 0), max(th - h, 0)
            img = F.pad(img, [dw // 2, dh // 2, (dw + 1) // 2, (dh + 1) // 2], fill=self.fill)
        return F.center_crop(img, list(self.size))


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
