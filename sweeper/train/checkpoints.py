"""Epoch checkpoints: everything to continue a run after an epoch, resumed only by a run of the same
config (a retry of a lost or interrupted trial), and only when they prove whole.

A checkpoint holds the whole run (every merged replica with its optimizer and schedule, the EMA), the
kept epochs so far and the RNG state; in a k-fold trial also the fold it is in and the finished folds'
results, so a killed k-fold trial resumes in the fold and epoch where it stopped.

The file is one header line of JSON (format, the config's resume key, the epoch, the payload's size and
SHA-256), then the payload as ``torch.save`` wrote it. A file whose checksum, config or epoch does not fit
is discarded with its reason (:func:`verify`) and the trial starts over: flipped bytes would otherwise
train on from damaged weights and blame the params. Writes are atomic (a temporary file, fsynced, then
renamed) and check the free space first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from sweeper import faults
from sweeper.study.config import TrialConfig

if TYPE_CHECKING:
    from sweeper.train.result import TrialResult
    from sweeper.train.runs import Run

_RESULT_KEYS = ("history", "best", "best_epoch", "state_dict", "also_kept", "stopped_early", "holdout_probs")


@dataclass
class Fold:
    """Where a k-fold trial is: the fold being trained (0-based) and the finished folds' results."""

    index: int = 0
    done: list[TrialResult] = field(default_factory=list)


FORMAT = "sweeper-checkpoint/1"
SPARE_BYTES = 64 << 20  # free space a write leaves on the device, for everything else there


def resume_key(cfg: TrialConfig) -> str:
    """What must match for a checkpoint to be resumed: the config, less how batches are split."""
    flat = cfg.flat()
    for k in ("micro_batch", "num_workers"):  # an OOM retry halves micro_batch: same training
        flat.pop(k, None)
    return repr(sorted(flat.items()))


def result_state(result: TrialResult) -> dict[str, Any]:
    """A run's result as plain tensors and lists (what ``torch.load(weights_only=True)`` reads back)."""
    state = {k: getattr(result, k) for k in _RESULT_KEYS}
    state["confusion"] = None if result.confusion is None else torch.from_numpy(result.confusion)
    return state


def restore_result(result: TrialResult, state: dict[str, Any]) -> TrialResult:
    for k in _RESULT_KEYS:
        setattr(result, k, state[k])
    result.confusion = None if state["confusion"] is None else state["confusion"].numpy()
    return result


def save(
    path: Path, cfg: TrialConfig, epoch: int, run: Run, result: TrialResult, fold: Fold | None = None
) -> None:
    """Everything to continue after ``epoch``; written to a temporary file, then renamed (atomic).

    Raises:
        OSError: ENOSPC when the device lacks the room (checked first); no temporary file is left.
    """
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
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    head = {"format": FORMAT, "key": _digest(resume_key(cfg).encode()), "epoch": epoch}
    head |= {"size": len(payload), "sha256": _digest(payload)}
    _write_atomic(path, json.dumps(head).encode() + b"\n" + payload)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _create(tmp) as f:  # from here on the folder holds a file, so it stays
            free = shutil.disk_usage(path.parent).free
            if free < len(data) + SPARE_BYTES:
                raise OSError(
                    errno.ENOSPC,
                    f"checkpoint {path} needs {len(data) / 1e6:.0f} MB, "
                    f"{free / 1e6:.0f} MB free on its device",
                )
            f.write(data)
            faults.hit("checkpoint-write")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _create(tmp: Path, tries: int = 3) -> BinaryIO:
    """``tmp`` opened for writing, its folder made first, and again should it go in between (``sweeper
    doctor --repair`` removes an emptied study folder)."""
    for attempt in range(tries):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            return open(tmp, "wb")
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path, cfg: TrialConfig) -> tuple[dict[str, Any] | None, bytes, str]:
    """The header and payload of a checkpoint for ``cfg``, or ``(None, b"", why it cannot be resumed)``."""
    try:
        with open(path, "rb") as f:
            head, payload = json.loads(f.readline()), f.read()
    except (OSError, ValueError):
        return None, b"", "not a sweeper checkpoint (unreadable header)"
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        return None, b"", f"not a {FORMAT} file"
    if head.get("key") != _digest(resume_key(cfg).encode()):
        return None, b"", "written for another config"
    if len(payload) != head.get("size") or _digest(payload) != head.get("sha256"):
        return None, b"", "checksum mismatch (the file is damaged or truncated)"
    epoch = head.get("epoch")
    if not isinstance(epoch, int) or not 1 <= epoch <= cfg.epochs:
        return None, b"", f"claims epoch {epoch}, outside the config's 1..{cfg.epochs}"
    return head, payload, ""


def verify(path: Path, cfg: TrialConfig) -> str:
    """Check a checkpoint before a resume: '' when it is whole and ``cfg``'s (or there is none); else the
    reason, and the file is deleted so that the trial starts over."""
    if not path.exists():
        return ""
    head, _, why = _read(path, cfg)
    if head is None:
        path.unlink(missing_ok=True)
    return why


def _load(path: Path, cfg: TrialConfig) -> dict[str, Any] | None:
    """The checkpoint's state when it is whole and ``cfg``'s (see :func:`verify`), else None."""
    if not path.exists():
        return None
    head, payload, _ = _read(path, cfg)
    if head is None:
        return None
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    return {**state, "epoch": head["epoch"]}


def saved_state(path: Path, cfg: TrialConfig) -> tuple[int, list[tuple[int, dict[str, float]]]]:
    """The step a checkpoint can resume after (fold f's epoch e is step ``f * epochs + e``) and every
    reported epoch it holds as ``(step, metrics)``, every fold's (a fold that stopped early reported fewer
    than ``epochs``); ``(0, [])`` when there is none or it belongs to another config."""
    state = _load(path, cfg)
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


def restore(path: Path, cfg: TrialConfig, run: Run, result: TrialResult, fold: Fold | None = None) -> int:
    """Load a matching checkpoint of this fold into the run and its result; return the next epoch. Its
    epochs are not reported again: the caller learns of them from :func:`saved_state`."""
    state = _load(path, cfg)
    if state is None or state["fold"] != (fold or Fold()).index:
        return 1
    run.load_state_dict(state["run"])
    torch.set_rng_state(state["rng"])
    restore_result(result, state["result"])
    return int(state["epoch"]) + 1
