"""Epoch checkpoints: everything to continue a single-model run after an epoch, written atomically, and
resumed only by a run of the same config (a retry of a lost or interrupted trial)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeper.spec import TrialConfig


def resume_key(cfg: TrialConfig) -> str:
    """What must match for a checkpoint to be resumed: the config, less how batches are split."""
    flat = cfg.flat()
    for k in ("micro_batch", "num_workers"):  # an OOM retry halves micro_batch: same training
        flat.pop(k, None)
    return repr(sorted(flat.items()))


def save(
    path: Path, cfg: TrialConfig, epoch: int, model: nn.Module, optimizer, scheduler, result: Any
) -> None:
    """Everything to continue after ``epoch``; written to a temporary file, then renamed (atomic)."""
    state = {
        "key": resume_key(cfg),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": result.history,
        "best": result.best,
        "best_epoch": result.best_epoch,
        "best_state": result.state_dict,
        "rng": torch.get_rng_state(),
        "confusion": None if result.confusion is None else torch.from_numpy(result.confusion),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def saved_state(path: Path, cfg: TrialConfig) -> tuple[int, list[dict[str, float]]]:
    """The epoch a checkpoint can resume after, and the metrics of the epochs it holds; ``(0, [])`` when
    there is none or it belongs to another config."""
    if not path.exists():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated or from an incompatible version: start over
        return 0, []
    if state.get("key") != resume_key(cfg):
        return 0, []
    return int(state["epoch"]), list(state["history"])


def restore(path: Path, cfg: TrialConfig, model: nn.Module, optimizer, scheduler, result: Any) -> int:
    """Load a matching checkpoint into the run; return the next epoch. Its epochs are not reported again:
    the caller learns of them from :func:`saved_state`."""
    if not saved_state(path, cfg)[0]:
        return 1
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    result.history, result.best, result.best_epoch = state["history"], state["best"], state["best_epoch"]
    result.state_dict = state["best_state"]
    result.confusion = None if state["confusion"] is None else state["confusion"].numpy()
    return int(state["epoch"]) + 1
