"""The trial process: what it is given (:class:`Job`), what it says back (the messages), and its entry
point (:func:`child_main`), which trains and streams its epochs over a pipe to the sweep process.

Parent and child talk over a pipe, one frozen dataclass a message::

    child  -> Discarded(reason)          a checkpoint failed its checks; the trial starts over
    child  -> Resumed(epoch, history)    restored from an epoch checkpoint (its epochs' metrics)
    child  -> Measured(costs)            costs timed on the trial's device before training
    child  -> Working(work)              how far an epoch or the cache build is; no answer, a few a second
    child  -> Epoch(epoch, metrics)      parent answers True (go on) or False (stop: pruned)
    child  -> Done(Trained) | Failed(kind, reason, details)

The child writes its artifacts (config, best weights, curves) into ``Job.out_dir``, which the parent
logs, and an epoch checkpoint that a retry of the same parameters resumes from. This side knows nothing
of Optuna, MLflow or the sweep: the parent (:mod:`sweeper.sweep.workers`) does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

from sweeper import meter
from sweeper.data.images import ImageFolderData
from sweeper.study.config import TrialConfig

History = list[tuple[int, dict[str, float]]]
"""Reported epochs as ``(step, metrics)``; a k-fold trial's step runs on across folds."""
FailureKind = Literal["oom", "diverged", "error", "disk", "data"]


@dataclass(frozen=True)
class Job:
    """Everything a trial process needs; pickled to the child."""

    cfg: TrialConfig
    data: ImageFolderData
    metric: str
    out_dir: Path  # the child writes the trial's artifacts here
    checkpoint: Path | None = None  # epoch checkpoint: resumed from when present, rewritten every epoch
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES for the child; None = inherit the parent's
    threads: int | None = None  # torch CPU threads; None = torch's default (all cores)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))  # the parent's, at submit time
    latency: bool = False  # time the model's forward pass before training (a latency_ms objective)


@dataclass(frozen=True)
class Trained:
    """What a finished trial process reports back; the weights and plots are in ``Job.out_dir``."""

    best_epoch: int
    best: dict[str, float]
    num_params: int
    epochs: int  # epochs in the history, restored ones included
    resumed_from: int = 0  # epoch restored from a checkpoint; 0 = started from scratch
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Discarded:
    reason: str  # why the checkpoint could not be resumed


@dataclass(frozen=True)
class Resumed:
    epoch: int  # the step restored from
    history: History  # the restored epochs' metrics, as they were reported


@dataclass(frozen=True)
class Measured:
    costs: dict[str, float]  # e.g. latency_ms, timed before training


@dataclass(frozen=True)
class Epoch:
    epoch: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Working:
    work: meter.Work  # sent by the process's meter sink, throttled (see :mod:`sweeper.meter`)


@dataclass(frozen=True)
class Done:
    trained: Trained


@dataclass(frozen=True)
class Failed:
    kind: FailureKind
    reason: str  # one line
    details: str  # the child's traceback


Message = Discarded | Resumed | Measured | Epoch | Working | Done | Failed


class _Stop(Exception):
    """The parent said stop (pruned): unwind the training loop quietly."""


def child_main(conn: Connection, job: Job) -> None:
    """Entry point of a trial process: train, stream epochs to the parent, classify any failure."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    # So is SIGTERM: Slurm's scancel and time limit signal every process of the step at once, and a trial
    # process dying of it first would look like a lost worker instead of an interrupted trial. The
    # worker kills this process when it stops; if the worker dies, the pipe watch below ends it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.clear()  # the fork server's environment is from when it started; use the parent's now
    os.environ.update(job.env)
    if job.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.gpu  # before anything touches CUDA
    _exit_with_worker(conn)
    import torch

    if job.threads:
        torch.set_num_threads(job.threads)
    meter.set_sink(lambda work: conn.send(Working(work)))  # only the training thread sends
    try:
        conn.send(Done(_train(conn, job)))
    except (_Stop, EOFError, BrokenPipeError):
        pass
    except BaseException as e:
        with contextlib.suppress(OSError):
            conn.send(failure(e))
    finally:
        conn.close()


def _train(conn: Connection, job: Job) -> Trained:
    from sweeper.train import artifacts, checkpoints, fit

    def report(epoch: int, metrics: dict[str, float]) -> None:
        conn.send(Epoch(epoch, metrics))
        if not conn.recv():
            raise _Stop

    if job.checkpoint is not None:
        bad = checkpoints.verify(job.checkpoint, job.cfg)
        if bad:
            print(f"trial checkpoint {job.checkpoint} discarded: {bad}", file=sys.stderr, flush=True)
            conn.send(Discarded(bad))
        epoch, history = checkpoints.saved_state(job.checkpoint, job.cfg)
        if epoch:
            conn.send(Resumed(epoch, history))
    if job.latency:  # before training, on the trial's device, with nothing else of this trial running
        from sweeper.data import loaders
        from sweeper.train import costs

        conn.send(Measured(costs.latency(job.cfg, len(job.data.classes), loaders.pick_device())))
    result = fit.run_trial(job.cfg, job.data, report, metric=job.metric, checkpoint=job.checkpoint)
    artifacts.write_trial(job.out_dir, job.cfg, job.data.classes, result)
    n = len(result.history)
    return Trained(result.best_epoch, result.best, result.num_params, n, history=result.history)


def failure(e: BaseException) -> Failed:
    """An exception of the trial, as the message that tells the parent what kind of failure it was."""
    from sweeper.data.images import BadImage
    from sweeper.train.fit import DivergedError

    kind: FailureKind = "error"
    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
    if is_oom(e):
        kind = "oom"
    elif isinstance(e, DivergedError):
        kind = "diverged"
    elif isinstance(e, BadImage):  # the data's problem, found by the cache build: its one line as it is
        kind, reason = "data", str(e)
    elif isinstance(e, OSError) and e.errno == errno.ENOSPC:
        kind = "disk"
        reason = f"no space left on the device: {e}; free space, or set SWEEPER_CHECKPOINTS elsewhere"
    return Failed(kind, reason, traceback.format_exc())


def is_oom(e: BaseException) -> bool:
    """Out of accelerator memory: by type (CUDA's allocator error is ``torch.OutOfMemoryError``); the
    message only as a fallback, for backends that raise a plain RuntimeError (MPS, some XPU builds)."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)


def _exit_with_worker(conn: Connection) -> None:
    """A trial process must not outlive its worker (SIGKILL, node loss): its GPU would stay taken.

    The trial process is the fork server's child, not the worker's, so its parent says nothing about
    the worker (nor does ``PR_SET_PDEATHSIG``, which follows the parent). Instead it watches its pipe:
    only the worker holds the other end, and the kernel closes that when the worker dies, however it
    dies. ``POLLRDHUP`` sees the close without reading, so the pipe's messages are left alone.
    """
    import select

    rdhup = getattr(select, "POLLRDHUP", 0)  # Linux; elsewhere the parent is watched, as a fallback
    parent = os.getppid()

    def watch() -> None:
        poller = select.poll()
        poller.register(conn.fileno(), rdhup)
        while True:
            for _, events in poller.poll(1000 if not rdhup else None):
                if events & (rdhup | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    os._exit(3)
            if not rdhup and os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()
