"""What a finished run hands back (:class:`TrialResult`): a module of its own, below the modules that
fill it (runs, checkpoints, artifacts) and the one that returns it (fit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrialResult:
    """What a finished run hands back: its history, best epoch and that epoch's weights and confusion."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0 = no validation (refit)
    best: dict[str, float] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    data_config: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0
    fold_states: list[dict[str, torch.Tensor]] = field(default_factory=list)  # k-fold: every fold's weights
    stopped_early: int = 0  # the epoch early stopping ended the run at; 0 = ran all epochs
    sensitive: list[tuple[str, float]] = field(default_factory=list)  # ranked tensors acted on, with scores
    # checkpoint: both: {"val_loss" or "val_acc": (epoch, its metrics, its weights)}, the second kept epoch
    also_kept: dict[str, tuple[int, dict[str, float], dict[str, torch.Tensor]]] = field(default_factory=dict)
    holdout_probs: torch.Tensor | None = None  # fold_holdout: the kept weights' probabilities on val
