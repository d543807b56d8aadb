"""Weight averaging: periodic merging of replicas, an EMA of the weights, and greedy soups of trials.

All three rest on one fact: fine-tuned models that start from the same pre-trained weights stay in one
basin of the loss, so the average of their weights is itself a good model (Model soups, Wortsman et al.
2022; Model Stock, Jang et al. 2024). Integer buffers (BatchNorm's batch counters) are not averaged:
the first model's are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; other tensors are taken from the first state."""
    if not states:
        raise ValueError("nothing to average: no state dicts given")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError("state dicts of different architectures cannot be averaged")
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            out[k] = (
                torch.stack([s[k].to(first.device, torch.float32) for s in states]).mean(0).to(first.dtype)
            )
        else:
            out[k] = first.clone()
    return out


@torch.no_grad()
def merge(models: Sequence[nn.Module]) -> None:
    """Periodic merging: replace every replica's weights (and BN statistics) by their average, in place."""
    avg = average_state_dicts([m.state_dict() for m in models])
    for m in models:
        m.load_state_dict(avg)


def ema(model: nn.Module, decay: float):
    """timm's EMA of ``model``'s weights; call ``.update(model, step=k)`` after every optimizer step.

    The decay warms up (``1 - (1 + step)^(-2/3)``, capped at ``decay``) so that short fine-tunes of a few
    hundred steps still average recent weights instead of staying near the initial ones.
    """
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


def greedy_soup(
    states: Sequence[dict[str, torch.Tensor]], score: Callable[[dict[str, torch.Tensor]], float]
) -> tuple[list[int], dict[str, torch.Tensor], float]:
    """Greedy soup: walk the candidates best first, keep one only if the averaged soup scores no worse.

    Args:
        states: candidate weights, sorted best first (by their own validation score).
        score: higher is better (validation accuracy of a state dict).

    Returns:
        The indices kept, the soup's weights (their uniform average) and its score.
    """
    kept = [0]
    soup = {k: v.clone() for k, v in states[0].items()}
    best = score(soup)
    for i in range(1, len(states)):
        trial = average_state_dicts([states[j] for j in [*kept, i]])
        s = score(trial)
        if s >= best:
            kept, soup, best = [*kept, i], trial, s
    return kept, soup, best
