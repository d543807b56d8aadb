"""Sensitive-layer analysis: which parameter tensors the validation loss pulls hardest on, and what to do.

Before training, the validation loss of the freshly built model is back-propagated over a few batches;
each backbone tensor's summed gradient is measured by its L2 norm, and tensors are ranked by it. The top-k
are then frozen (to keep what pre-training learned where the new data pulls hardest) or given their own
learning rate and weight decay. The new head is never ranked: it is randomly initialised, so its gradient
says nothing about pre-trained knowledge.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sweeper.study.config import SensitivityConfig


def rank(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    max_batches: int,
    exclude: set[int] | None = None,
) -> list[tuple[str, float]]:
    """Trainable tensors by the norm of their summed validation gradient, largest first.

    The model runs in eval mode (pre-trained BatchNorm statistics, no dropout), so the ranking describes
    the model as it is, not one perturbed by the measurement. Gradients are cleared afterwards.

    Args:
        exclude: ids of parameters never ranked (the new head).
    """
    exclude = exclude or set()
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(batches):
        if i >= max_batches:
            break
        F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum").backward()
    scores = [
        (name, float(p.grad.norm()))
        for name, p in model.named_parameters()
        if p.requires_grad and p.grad is not None and id(p) not in exclude
    ]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return sorted(scores, key=lambda s: s[1], reverse=True)


def own_groups(top: list[str], cfg: SensitivityConfig) -> dict[str, dict[str, float]]:
    """``{name: {"lr": .., "weight_decay": ..}}`` for boosted tensors; rank i takes value i (or the last)."""
    return {name: rank_values(i, cfg) for i, name in enumerate(top)}


def rank_values(rank: int, cfg: SensitivityConfig) -> dict[str, float]:
    """The boosted LR and weight decay of rank ``rank`` (0-based): value i, or the last; absent = unset."""
    o: dict[str, float] = {}
    if cfg.lr is not None:
        o["lr"] = cfg.lr[min(rank, len(cfg.lr) - 1)]
    if cfg.weight_decay is not None:
        o["weight_decay"] = cfg.weight_decay[min(rank, len(cfg.weight_decay) - 1)]
    return o


def freeze(model: nn.Module, names: list[str]) -> None:
    """Stop gradients to the named tensors: the optimizer never sees them, so they stay bit-identical."""
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(False)
