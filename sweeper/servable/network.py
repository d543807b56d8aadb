"""The network of a trained model, and how it turns a batch of images into class probabilities.

A timm backbone with timm's own classifier (heads ``linear``, ``dropout``) or a :class:`FeatureHead` on
its un-pooled feature map (``se``, ``attention``). Training builds its model with these same pieces
(adding pretrained weights and freezing), so a saved ``state_dict`` loads into :func:`build` as is.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

FEATURE_HEADS = ("se", "attention")  # heads on the un-pooled feature map; the others are timm's classifier


class FeatureHead(nn.Module):
    """A classifier on the backbone's un-pooled feature map: squeeze-excitation or attention pooling.

    ``se``: a squeeze-excitation block reweights channels, then average pooling and a linear layer.
    ``attention``: a learned query attends over the spatial positions (multi-head), then a linear layer.
    """

    def __init__(self, kind: str, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.kind = kind
        if kind == "se":
            hidden = max(8, channels // 16)
            self.se = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(channels, hidden, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, channels, 1),
                nn.Sigmoid(),
            )
        else:
            heads = next(h for h in (8, 4, 2, 1) if channels % h == 0)
            self.query = nn.Parameter(torch.zeros(1, 1, channels))
            self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``[B, C, H, W]`` -> one vector per image ``[B, C]`` (the pre-logits features)."""
        if self.kind == "se":
            return (x * self.se(x)).mean(dim=(2, 3))
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        pooled, _ = self.attn(self.query.expand(x.shape[0], -1, -1), tokens, tokens)
        return pooled[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(x)))


class HeadedModel(nn.Module):
    """A timm backbone without its pooling and classifier, plus a :class:`FeatureHead`."""

    def __init__(self, backbone: nn.Module, head: FeatureHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.feature_info = backbone.feature_info
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))  # type: ignore[operator]  # nn.Module attributes type as Tensor | Module


def timm_kwargs(head: str, num_classes: int) -> dict[str, Any]:
    """``timm.create_model`` arguments for a head: timm's pooling and classifier, or none of either."""
    if head in FEATURE_HEADS:
        return {"num_classes": 0, "global_pool": ""}
    return {"num_classes": num_classes, "drop_rate": 0.0}  # a head's dropout is applied before it


def with_head(model: nn.Module, head: str, num_classes: int, dropout: float) -> nn.Module:
    """The timm model :func:`timm_kwargs` made, with its :class:`FeatureHead` when the head is one."""
    if head in FEATURE_HEADS:
        return HeadedModel(model, FeatureHead(head, model.num_features, num_classes, dropout))  # type: ignore[arg-type]  # nn.Module attributes type as Tensor | Module
    return model


def build(backbone: str, head: str, num_classes: int, head_dropout: float = 0.0) -> nn.Module:
    """The untrained network of a saved model, to load its weights into (no pretrained weights read)."""
    import timm

    model = timm.create_model(backbone, pretrained=False, **timm_kwargs(head, num_classes))
    return with_head(model, head, num_classes, head_dropout)


SLOW_CHANNELS_LAST = ("resnest",)
"""Model families whose CUDA steps get slower in channels_last (ResNeSt's split attention reshapes
its activations, forcing layout copies); ``channels_last: auto`` leaves them in NCHW."""


def channels_last(setting: str | bool, backbone: str, device: torch.device) -> bool:
    """``true``/``false`` as asked; ``auto`` = on CUDA (tensor cores want NHWC) unless known to slow down."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda" and not backbone.startswith(SLOW_CHANNELS_LAST)


def autocast(device: torch.device, precision: str = "bf16") -> contextlib.AbstractContextManager[Any]:
    """bf16 (or fp16) autocast on CUDA; on the CPU only with ``SWEEPER_CPU_BF16=1`` (CPUs with AMX or
    AVX512-BF16 gain from it, others lose), which also runs the CUDA numerics path where there is no GPU.

    Without it the CPU computes in float32 whatever ``precision`` says."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    on = os.environ.get("SWEEPER_CPU_BF16", "").lower() in ("1", "true", "yes", "on")
    return torch.autocast("cpu", dtype=dtype, enabled=on)


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Class probabilities of a batch (in float32); with TTA, the mean of the image's and its mirror's."""
    p = model(x).float().softmax(1)
    if tta:
        p = 0.5 * (p + model(x.flip(3)).float().softmax(1))
    return p
