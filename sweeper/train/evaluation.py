"""A trained model on images: probabilities, validation loss/accuracy/confusion, test-set predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.data import augment, loaders, tensors
from sweeper.servable import network
from sweeper.study.config import TrialConfig
from sweeper.train import model as model_lib


@torch.no_grad()
def predict_logits(model: nn.Module, batches, device: torch.device, tta: bool = False):
    """Yield ``(probabilities, labels)`` per batch; with TTA, the mean of the image and its mirror."""
    model.eval()
    for x, y in batches:
        x = loaders.to_device(x, device)
        with loaders.autocast(device):
            p = network.probabilities(model, x, tta)
        yield p, y.to(device)


def evaluate(model: nn.Module, batches, num_classes: int, device: torch.device, tta: bool = False):
    """Mean NLL and accuracy of the (TTA-averaged) probabilities, and the confusion matrix."""
    loss_sum, n = torch.zeros((), device=device), 0  # summed on the device: no sync per batch
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    for p, y in predict_logits(model, batches, device, tta):
        loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum")
        n += len(y)
        confusion += torch.bincount(y * num_classes + p.argmax(1), minlength=num_classes**2)
    cm = confusion.view(num_classes, num_classes).cpu().numpy()
    return loss_sum.item() / max(n, 1), float(np.trace(cm) / max(n, 1)), cm


def load_for_inference(cfg: TrialConfig, num_classes: int, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a trained model from its config and weights (no pretrained weights needed), as the
    served model does (:func:`sweeper.servable.network.build`)."""
    model_lib.check_backbone(cfg.backbone)
    model = network.build(cfg.backbone, cfg.head, num_classes, cfg.head_dropout)
    model.load_state_dict(state_dict)
    return model


def predict_files(
    model: nn.Module, files, cfg: TrialConfig, dcfg: dict[str, Any], device: torch.device | None = None
):
    """Class probabilities ``[N, C]`` for image files, with the eval transform (and TTA when on)."""
    device = device or loaders.pick_device()
    model.to(device)
    ds = tensors.ImageDataset(tuple(files), None, augment.eval_transform(dcfg, cfg.eval, cfg.normalize))
    dl = loaders.loader(ds, cfg, train=False, device=device)
    return torch.cat([p.cpu() for p, _ in predict_logits(model, dl, device, cfg.eval.tta)])
