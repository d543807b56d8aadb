"""The eval transform: timm's eval geometry on uint8 ``[3, H, W]`` tensors, then to float and normalize.

Mean, std, interpolation and crop_pct come from the model's data config (saved with it), never typed
twice; the geometry is timm's own (``transforms_imagenet_eval``): resize to ``floor(size / crop_pct)``,
then ``center`` / ``squash`` / ``border`` as timm's ``crop_mode`` says.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T


class EvalSettings(Protocol):
    """How evaluation sees an image (sweeper's ``EvalConfig``): None = the model's own value."""

    @property
    def img_size(self) -> int | None: ...
    @property
    def crop_pct(self) -> float | None: ...
    @property
    def crop_mode(self) -> str | None: ...


@dataclass(frozen=True)
class Eval:
    """:class:`EvalSettings` read back from a saved config's ``eval.*`` keys."""

    img_size: int | None = None
    crop_pct: float | None = None
    crop_mode: str | None = None
    tta: bool = False  # the mean of the image's and its horizontal mirror's probabilities


def interp_mode(name: str) -> InterpolationMode:
    """An interpolation name as timm maps it."""
    from timm.data.transforms import str_to_interp_mode

    return str_to_interp_mode(name)


def interpolation(data_cfg: dict[str, Any]) -> InterpolationMode:
    """The model's interpolation, as timm maps its name."""
    return interp_mode(data_cfg.get("interpolation", "bilinear"))


def to_float(data_cfg: dict[str, Any], normalize: bool) -> list[Any]:
    """uint8 -> float in [0, 1], then the model's mean/std unless ``normalize`` is off."""
    ops: list[Any] = [T.ToDtype(torch.float32, scale=True)]
    return ops + [T.Normalize(data_cfg["mean"], data_cfg["std"])] if normalize else ops


def eval_geometry(data_cfg: dict[str, Any], ev: EvalSettings | None = None) -> dict[str, Any]:
    """The eval's size, crop_pct, crop_mode and interpolation: ``ev`` where set, else the model's."""
    ev = ev or Eval()
    return {
        "img_size": ev.img_size or data_cfg["input_size"][-1],
        "crop_pct": ev.crop_pct or data_cfg.get("crop_pct") or 0.875,
        "crop_mode": ev.crop_mode or data_cfg.get("crop_mode") or "center",
        "interpolation": data_cfg.get("interpolation", "bilinear"),
    }


def eval_transform(
    data_cfg: dict[str, Any], ev: EvalSettings | None = None, normalize: bool = True
) -> T.Compose:
    """timm's eval geometry (its own ops, so sizes floor and crop modes match timm), then to float."""
    return T.Compose([*EvalCrop(data_cfg, ev).ops, *to_float(data_cfg, normalize)])


class EvalCrop:
    """The uint8 geometry of :func:`eval_transform` (timm's resize, then crop or pad) as one op.

    Deterministic, so the decoded-image cache can store its output for the images a run evaluates:
    their pixels are then exactly those ``predict`` computes from the files. Also a cache resizer
    (``size``, ``interpolation``, ``antialias``, ``max_size``; ``key`` names the whole geometry).
    """

    antialias, max_size = True, None

    def __init__(self, data_cfg: dict[str, Any], ev: EvalSettings | None = None) -> None:
        from timm.data.transforms import CenterCropOrPad as TimmCenterCropOrPad
        from timm.data.transforms_factory import transforms_imagenet_eval

        geo = eval_geometry(data_cfg, ev)
        pipeline = transforms_imagenet_eval(**geo, mean=data_cfg["mean"], use_prefetcher=True)
        timm_ops = pipeline.transforms[:-1]  # all but its to-tensor step
        self.ops = [
            CenterCropOrPad(op.size, op.fill) if isinstance(op, TimmCenterCropOrPad) else op
            for op in timm_ops
        ]
        self.size = [geo["img_size"], geo["img_size"]]  # every crop mode ends at img_size x img_size
        self.interpolation = interp_mode(geo["interpolation"])
        self.key = json.dumps({"eval_crop": geo, "ops": repr(self.ops)})

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            img = op(img)
        return img

    def __repr__(self) -> str:
        return f"EvalCrop({self.key})"


class CenterCropOrPad:
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
