"""Workers on one machine: trial processes and GPU slots.

A worker is a thread of the ``run-study`` process that keeps the Optuna trial and the MLflow run; the
training itself runs in a fresh child process per trial (:func:`train_in_process`). So a trial's GPU
memory is freed with its process, a crash in training (segfault, the kernel's OOM killer) cannot take
the bookkeeping with it, and each child sees only its own GPU through ``CUDA_VISIBLE_DEVICES``.

The child's side, and the messages both sides exchange, are in :mod:`sweeper.train.process`; this
module serves those messages to a :class:`Listener` and turns a failed child into a typed failure."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Literal

from sweeper.errors import SweeperError
from sweeper.meter import Work
from sweeper.study.config import TrialConfig
from sweeper.train.process import (
    Discarded,
    Done,
    Epoch,
    Failed,
    History,
    Job,
    Measured,
    Resumed,
    Trained,
    Working,
    child_main,
)

__all__ = ["Job", "Listener", "Trained", "train_in_process"]

INTERRUPTED = threading.Event()
"""Set by the main thread on Ctrl-C/SIGTERM: every worker kills its trial process and stops."""

POLL_S = 0.5  # how often a waiting worker checks for an interrupt or a dead child


def _ignore(*_: object) -> None:
    return None


@dataclass(frozen=True)
class Listener:
    """What the sweep side does with a trial process's messages; runs in the worker's thread."""

    epoch: Callable[[int, dict[str, float]], None]  # may raise (pruned): the child is told to stop
    restored: Callable[[int, History], None] = _ignore  # epochs a checkpoint restored: heard once
    discarded: Callable[[str], None] = _ignore  # a checkpoint failed its checks; the trial starts over
    measured: Callable[[dict[str, float]], None] = _ignore  # costs timed on the trial's device
    working: Callable[[Work], None] = _ignore  # how far the epoch or the cache build is (throttled)


# ---- failures, by kind ----------------------------------------------------------------------


class TrialFailure(Exception):
    """A trial process ended without a result. ``details`` is the child's traceback, when it sent one."""

    kind: Literal["oom", "diverged", "error", "lost"] = "error"

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(reason)
        self.reason, self.details = reason, details


class OutOfMemory(TrialFailure):
    """The accelerator ran out of memory: worth one retry with a smaller micro-batch."""

    kind = "oom"


class Diverged(TrialFailure):
    """The loss or the objective became NaN/inf: the parameters are infeasible, not the code broken."""

    kind = "diverged"


class Crashed(TrialFailure):
    """Training raised an error: a bug or a bad configuration."""

    kind = "error"


class WorkerLost(TrialFailure):
    """The trial process died without a word (killed, segfault, out of host memory)."""

    kind = "lost"


class DiskFull(TrialFailure):
    """No space left for the trial's checkpoint or artifacts: the machine's problem, not the params'."""

    kind = "error"


class BadData(TrialFailure):
    """An image that cannot be decoded (found by the cache build, before training): the data's problem,
    the same for every trial, so the sweep stops on it."""

    kind = "error"


_KINDS: dict[str, type[TrialFailure]] = {
    "oom": OutOfMemory,
    "diverged": Diverged,
    "error": Crashed,
    "disk": DiskFull,
    "data": BadData,
}


# ---- one trial in a child process -------------------------------------------------------------


def train_in_process(job: Job, listener: Listener) -> Trained:
    """Train ``job`` in a fresh process; ``listener`` hears its messages here, in the caller.

    ``listener.epoch`` may raise (a pruner's TrialPruned): the child is told to stop, and the exception
    goes on. ``listener.restored`` hears once of the epochs a checkpoint restored; they are not reported.

    Raises:
        OutOfMemory, Diverged, Crashed: the child's error, with its traceback in ``details``.
        WorkerLost: the child died without a result.
        KeyboardInterrupt: :data:`INTERRUPTED` was set; the child has been killed.
    """
    ctx = _context()
    here, there = ctx.Pipe()
    proc = ctx.Process(target=child_main, args=(there, job), name="sweeper-trial")
    try:
        proc.start()
    except (EOFError, OSError) as e:  # the fork server died while it started (Ctrl-C hits it too)
        here.close()
        if INTERRUPTED.wait(5.0):  # the main thread is about to say so, if that is what it was
            raise KeyboardInterrupt from None
        raise WorkerLost(
            f"the fork server of trial processes died while starting ({type(e).__name__})"
        ) from None
    finally:
        there.close()
    try:
        return _serve(proc, here, listener)
    finally:
        here.close()  # a child still waiting for an answer sees EOF and exits
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _serve(proc: BaseProcess, conn: Connection, listener: Listener) -> Trained:
    resumed = 0
    while True:
        msg = _next(proc, conn)
        match msg:
            case Epoch(epoch, metrics):
                _answer(proc, conn, listener, epoch, metrics)
            case Resumed(epoch, history):
                resumed = epoch
                listener.restored(epoch, history)
            case Discarded(reason):
                listener.discarded(reason)
            case Measured(costs):
                listener.measured(costs)
            case Working(work):
                listener.working(work)
            case Done(trained):
                return dataclasses.replace(trained, resumed_from=resumed)
            case Failed(kind, reason, details):
                raise _KINDS[kind](reason, details)
            case _:
                raise TypeError(f"a trial process sent {msg!r}, not a message of sweeper.train.process")


def _next(proc: BaseProcess, conn: Connection) -> object:
    """The child's next message; raises on an interrupt or when the child died without one."""
    while True:
        if INTERRUPTED.is_set():
            proc.kill()
            raise KeyboardInterrupt
        if conn.poll(POLL_S):
            break
        if not proc.is_alive() and not conn.poll(0):
            if INTERRUPTED.wait(2.0):  # a signal to the whole group (Slurm) reached it first
                raise KeyboardInterrupt
            raise WorkerLost(_death(proc))
    try:
        return conn.recv()
    except (EOFError, OSError):
        proc.join(timeout=5)
        raise WorkerLost(_death(proc)) from None


def _answer(
    proc: BaseProcess, conn: Connection, listener: Listener, epoch: int, metrics: dict[str, float]
) -> None:
    """Hand an epoch to the listener and tell the child whether to go on (no, when the listener raised)."""
    try:
        listener.epoch(epoch, metrics)
    except BaseException:
        _send(conn, False)
        raise
    if not _send(conn, True):
        proc.join(timeout=5)
        raise WorkerLost(_death(proc))


def _send(conn: Connection, value: bool) -> bool:
    try:
        conn.send(value)
        return True
    except (BrokenPipeError, OSError):
        return False


def _death(proc: BaseProcess) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's OOM killer sends it when host memory runs out)" if name == "SIGKILL" else ""
        return f"trial process was killed by {name}{hint}"
    return f"trial process exited with code {code} without a result"


def _context() -> multiprocessing.context.ForkServerContext:
    """Trial processes fork from a fork server that has already imported torch and timm.

    Every trial still gets a fresh process (its GPU memory goes when it exits), but it skips the
    seconds of interpreter start and imports a spawned process pays. The server itself is a clean,
    single-threaded process with no CUDA context, so forking it is safe (forking this process, which
    holds threads and maybe CUDA, is not).
    """
    ctx = multiprocessing.get_context("forkserver")
    preload = ["sweeper.faults", "torch", "timm", "sweeper.train.process", "sweeper.train.fit"]
    ctx.set_forkserver_preload(
        [*preload, "sweeper.train.artifacts", "sweeper.train.figures", "sweeper.sweep.freeze"]  # freeze last
    )
    return ctx


def start_fork_server() -> None:
    """Start the fork server now, from the main thread, with Ctrl-C and SIGTERM ignored: it keeps that
    for life, so a Ctrl-C while it imports torch is the sweep's to handle (trials closed as interrupted),
    not a traceback from the server and a trial that fails for want of it; and Slurm's SIGTERM to every
    process of a step (scancel, time limit) does not kill the server, without which a running trial's
    exit status is lost (it would look like a lost worker). The server ends when the sweep does."""
    from multiprocessing import forkserver

    _context()
    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def in_fork_server(fn: str, *args: object) -> object:
    """``fn(*args)`` in a child of the trials' fork server (started now if need be), its value or its
    SweeperError returned here: work that needs torch and timm without this process importing them.
    ``fn`` names a module-level function, ``"package.module:function"``: the child imports it, this
    process never does."""
    start_fork_server()
    ctx = _context()
    ours, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_call, args=(theirs, fn, args), daemon=True)
    proc.start()
    theirs.close()
    try:
        kind, value = ours.recv()
    except EOFError:
        proc.join()
        raise SweeperError(f"checking the study before its trials failed: {_death(proc)}") from None
    finally:
        ours.close()
    proc.join()
    if kind == "error":
        raise SweeperError(value)
    if kind == "bug":
        raise RuntimeError(f"{fn} failed in a fork-server child:\n{value}")
    return value


def _call(conn: Connection, fn: str, args: tuple[object, ...]) -> None:
    """The child's side: Ctrl-C is the parent's to handle (the group's signal reaches this process too),
    SIGTERM ends it (the parent's exit terminates it); an answer nobody waits for any more is dropped."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    module, _, name = fn.partition(":")
    try:
        answer: tuple[str, object] = ("value", getattr(importlib.import_module(module), name)(*args))
    except SweeperError as e:
        answer = ("error", str(e))
    except BaseException:
        answer = ("bug", traceback.format_exc())
    with contextlib.suppress(OSError):  # BrokenPipeError: the parent was interrupted meanwhile
        conn.send(answer)
    conn.close()


def halve_micro_batch(cfg: TrialConfig) -> TrialConfig | None:
    """The same effective batch in twice the steps: half the micro-batch, gradient accumulation."""
    current = cfg.micro_batch or cfg.batch_size
    if current <= 1:
        return None
    return dataclasses.replace(cfg, micro_batch=current // 2)


# ---- worker slots and GPUs --------------------------------------------------------------------


def slots(workers: int | None, gpus: str | None, available: int = 0) -> list[str | None]:
    """One entry per worker: the ``CUDA_VISIBLE_DEVICES`` its trial processes get (None = CPU/inherit).

    Args:
        workers: ``--workers``; default one per listed GPU, else 1.
        gpus: ``--gpus`` as typed, e.g. ``"0,1,2,3"``: indexes among the GPUs this process sees.
        available: how many GPUs this process sees (``torch.cuda.device_count()``).
    """
    if gpus is None:
        return [None] * (workers or 1)
    items = [g.strip() for g in gpus.split(",")]
    if not all(g.isdigit() for g in items):
        raise SweeperError(f"--gpus {gpus!r}: expected comma-separated GPU indexes such as 0,1,2,3")
    indexes = [int(g) for g in items]
    if len(set(indexes)) != len(indexes):
        raise SweeperError(
            f"--gpus {gpus!r}: a GPU is listed twice; list each once (use --workers for "
            "several workers per GPU)"
        )
    if available == 0:
        raise SweeperError(
            f"--gpus {gpus}: PyTorch sees no CUDA GPU on this machine; drop --gpus to train "
            "on the CPU, or check the driver and CUDA_VISIBLE_DEVICES"
        )
    missing = [i for i in indexes if i >= available]
    if missing:
        raise SweeperError(
            f"--gpus {gpus}: no GPU {missing[0]} here; this machine has {available} "
            f"(indexes 0..{available - 1})"
        )
    n = workers or len(indexes)
    if n < len(indexes):
        raise SweeperError(
            f"--workers {n} is fewer than the {len(indexes)} GPUs in --gpus {gpus}; list only the GPUs to use"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in visible.split(",")] if visible else [str(i) for i in range(available)]
    return [ids[indexes[k % len(indexes)]] for k in range(n)]  # extra workers share GPUs round-robin


def cuda_device_count() -> int:
    """GPUs this process sees; no CUDA context is created, so no GPU memory is taken here."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_threads(workers: int) -> int | None:
    """Torch threads per trial process so that K concurrent trials share the cores instead of fighting."""
    return None if workers <= 1 else max(1, (os.cpu_count() or 1) // workers)


def worker_name(slot: int, gpu: str | None) -> str:
    """``host:pid/slot[/gpuN]``: which machine, process and GPU ran a trial (kept on the trial)."""
    return f"{socket.gethostname()}:{os.getpid()}/{slot}" + (f"/gpu{gpu}" if gpu is not None else "")
