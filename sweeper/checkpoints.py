"""Epoch checkpoints: everything to continue a single-model run after an epoch, resumed only by a run of
the same config (a retry of a lost or interrupted trial), and only when they prove whole.

A checkpoint file is one header line of JSON (format, the config's resume key, the epoch, the payload's
size and SHA-256), then the payload as ``torch.save`` wrote it. A file whose checksum, config or epoch
does not fit is discarded with its reason (:func:`verify`) and the trial starts over: flipped bytes
would otherwise train on from damaged weights and blame the params. Writes are atomic (a temporary
file, fsynced, then renamed) and check the free space first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeper import faults
from sweeper.spec import TrialConfig

FORMAT = "sweeper-checkpoint/1"
SPARE_BYTES = 64 << 20  # free space a write leaves on the device, for everything else there


def resume_key(cfg: TrialConfig) -> str:
    """What must match for a checkpoint to be resumed: the config, less how batches are split."""
    flat = cfg.flat()
    for k in ("micro_batch", "num_workers"):  # an OOM retry halves micro_batch: same training
        flat.pop(k, None)
    return repr(sorted(flat.items()))


def save(
    path: Path, cfg: TrialConfig, epoch: int, model: nn.Module, optimizer, scheduler, result: Any
) -> None:
    """Everything to continue after ``epoch``; written to a temporary file, then renamed (atomic).

    Raises:
        OSError: ENOSPC when the device lacks the room (checked first); no temporary file is left.
    """
    state = {
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
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    head = {"format": FORMAT, "key": _digest(resume_key(cfg).encode()), "epoch": epoch}
    head |= {"size": len(payload), "sha256": _digest(payload)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(head).encode() + b"\n" + payload)


def _write_atomic(path: Path, data: bytes) -> None:
    free = shutil.disk_usage(path.parent).free
    if free < len(data) + SPARE_BYTES:
        raise OSError(
            errno.ENOSPC,
            f"checkpoint {path} needs {len(data) / 1e6:.0f} MB, {free / 1e6:.0f} MB free on its device",
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            faults.hit("checkpoint-write")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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


def saved_state(path: Path, cfg: TrialConfig) -> tuple[int, list[dict[str, float]]]:
    """The epoch a checkpoint can resume after, and the metrics of the epochs it holds; ``(0, [])`` when
    there is none or it fails its checks (see :func:`verify`)."""
    state = _load(path, cfg)
    if state is None:
        return 0, []
    return int(state["epoch"]), list(state["history"])


def _load(path: Path, cfg: TrialConfig) -> dict[str, Any] | None:
    if not path.exists():
        return None
    head, payload, _ = _read(path, cfg)
    if head is None:
        return None
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    return {**state, "epoch": head["epoch"]}


def restore(path: Path, cfg: TrialConfig, model: nn.Module, optimizer, scheduler, result: Any) -> int:
    """Load a matching checkpoint into the run; return the next epoch. Its epochs are not reported again:
    the caller learns of them from :func:`saved_state`."""
    state = _load(path, cfg)
    if state is None:
        return 1
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    result.history, result.best, result.best_epoch = state["history"], state["best"], state["best_epoch"]
    result.state_dict = state["best_state"]
    result.confusion = None if state["confusion"] is None else state["confusion"].numpy()
    return int(state["epoch"]) + 1
