"""Test-only timm models with real failure modes, for the failure-taxonomy tests.

Registered by ``sitecustomize.py`` (beside this file) in every process that imports timm.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models import register_model

DEVICE_IMAGES = 4  # images per forward pass the pretend accelerator of ``oom_resnet`` holds


@register_model
def oom_resnet(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """``test_resnet`` on an accelerator that holds 4 images per forward pass: more raise CUDA OOM."""
    model = timm.create_model("test_resnet", pretrained=False, **kwargs)

    def check(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        n = args[0].shape[0]
        if module.training and n > DEVICE_IMAGES:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {n * 64} MiB (this device holds {DEVICE_IMAGES} "
                f"images per forward pass, got {n})"
            )

    model.register_forward_pre_hook(check)
    return model


@register_model
def broken_resnet(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """``test_resnet`` whose classifier expects one feature more than the backbone gives: a real bug
    that fails every forward pass the same way, as a broken configuration does."""
    model = timm.create_model("test_resnet", pretrained=False, **kwargs)
    model.fc = torch.nn.Linear(model.num_features + 1, model.fc.out_features)
    return model


@register_model
def fault_resnet(pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """``test_resnet`` that passes the fault point ``mid-epoch`` on every training step (see
    ``sweeper/faults.py``): a test pauses a trial process there, inside an epoch, to kill it."""
    from sweeper import faults

    model = timm.create_model("test_resnet", pretrained=False, **kwargs)

    def step(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if module.training:
            faults.hit("mid-epoch")

    model.register_forward_pre_hook(step)
    return model
