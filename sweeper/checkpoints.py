"""Epoch checkpoints: everything to continue a run after an epoch, written atomically, and resumed only by
a run of the same config (a retry of a lost or interrupted trial).

A checkpoint holds the whole run (every merged replica with its optimizer and schedule, the EMA), the
kept epochs so far and the RNG state; in a k-fold trial also the fold it is in and the finished folds'
results, so a killed k-fold trial resumes in the fold and epoch where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sweeper.spec import TrialConfig

_RESULT_KEYS = ("history", "best", "best_epoch", "state_dict", "also_kept", "stopped_early", "holdout_probs")


@dataclass
class Fold:
    """Where a k-fold trial is: the fold being trained (0-based) and the finished folds' results."""

    index: int = 0
    done: list[Any] = field(default_factory=list)


def resume_key(cfg: TrialConfig) -> str:
    """What must match for a checkpoint to be resumed: the config, less how batches are split."""
    flat = cfg.flat()
    for k in ("micro_batch", "num_workers"):  # an OOM retry halves micro_batch: same training
        flat.pop(k, None)
    return repr(sorted(flat.items()))


def result_state(result: Any) -> dict[str, Any]:
    """A run's result as plain tensors and lists (what ``torch.load(weights_only=True)`` reads back)."""
    state = {k: getattr(result, k) for k in _RESULT_KEYS}
    state["confusion"] = None if result.confusion is None else torch.from_numpy(result.confusion)
    return state


def restore_result(result: Any, state: dict[str, Any]) -> Any:
    for k in _RESULT_KEYS:
        setattr(result, k, state[k])
    result.confusion = None if state["confusion"] is None else state["confusion"].numpy()
    return result


def save(path: Path, cfg: TrialConfig, epoch: int, run: Any, result: Any, fold: Fold | None = None) -> None:
    """Everything to continue after ``epoch``; written to a temporary file, then renamed (atomic)."""
    fold = fold or Fold()
    state = {
        "key": resume_key(cfg),
        "fold": fold.index,
        "done": [result_state(r) for r in fold.done],
        "epoch": epoch,
        "run": run.state_dict(),
        "result": result_state(result),
        "rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path, cfg: TrialConfig, mmap: bool = False) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:  # truncated or from an incompatible version: start over
        return None
    return state if state.get("key") == resume_key(cfg) else None


def saved_state(path: Path, cfg: TrialConfig) -> tuple[int, list[tuple[int, dict[str, float]]]]:
    """The step a checkpoint can resume after (fold f's epoch e is step ``f * epochs + e``) and every
    reported epoch it holds as ``(step, metrics)``, every fold's (a fold that stopped early reported fewer
    than ``epochs``); ``(0, [])`` when there is none or it belongs to another config."""
    state = _load(path, cfg, mmap=True)
    if state is None:
        return 0, []
    steps = [
        (f * cfg.epochs + e, h)
        for f, done in enumerate(state["done"])
        for e, h in enumerate(done["history"], 1)
    ]
    base = state["fold"] * cfg.epochs
    steps += [(base + e, h) for e, h in enumerate(state["result"]["history"], 1)]
    return base + int(state["epoch"]), steps


def finished_folds(path: Path | None, cfg: TrialConfig) -> list[dict[str, Any]]:
    """The results of the folds a k-fold trial's checkpoint had finished (none without one)."""
    state = None if path is None else _load(path, cfg)
    return [] if state is None else list(state["done"])


def restore(path: Path, cfg: TrialConfig, run: Any, result: Any, fold: Fold | None = None) -> int:
    """Load a matching checkpoint of this fold into the run and its result; return the next epoch. Its
    epochs are not reported again: the caller learns of them from :func:`saved_state`."""
    state = _load(path, cfg)
    if state is None or state["fold"] != (fold or Fold()).index:
        return 1
    run.load_state_dict(state["run"])
    torch.set_rng_state(state["rng"])
    restore_result(result, state["result"])
    return int(state["epoch"]) + 1
