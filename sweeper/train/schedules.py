"""Learning-rate schedules, stepped once per optimizer step: warmup then cosine or constant, or OneCycle.

Every schedule is a torch ``LRScheduler`` over the optimizer's own groups, so each group (backbone, head,
boosted tensors) keeps its LR ratio, and an epoch checkpoint saves and restores it like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sweeper.study.config import TrialConfig


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup from 0 to 1, then cosine decay to 0 or constant.

    Step ``k`` (0-based, the k-th optimizer step) gets what timm's reference trainer gives it with
    ``--sched-on-updates --warmup-lr 0 --warmup-prefix --min-lr 0``: ``k / warmup_steps`` in the warmup
    (step 0 at 0, the peak first reached at step ``warmup_steps``), then the cosine over the steps after it.
    """

    def f(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def create(
    optimizer: torch.optim.Optimizer, cfg: TrialConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The trial's schedule over ``cfg.epochs * steps_per_epoch`` steps.

    ``onecycle`` is torch's ``OneCycleLR`` with each group's LR as its peak (as the fastai-style template
    of recipe 000 ran it: momentum / Adam's beta1 cycle too); ``warmup_epochs`` does not apply to it.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.lr_schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=cfg.onecycle_pct_start,
            div_factor=cfg.onecycle_div_factor,
            final_div_factor=cfg.onecycle_final_div_factor,
        )
    multiplier = lr_multiplier(cfg.lr_schedule, total, int(cfg.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
