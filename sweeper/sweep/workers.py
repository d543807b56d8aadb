"""Workers on one machine: trial processes and GPU slots.

A worker is a thread of the ``run-study`` process that keeps the Optuna trial and the MLflow run; the
training itself runs in a fresh child process per trial (:func:`train_in_process`). So a trial's GPU
memory is freed with its process, a crash in training (segfault, the kernel's OOM killer) cannot take
the bookkeeping with it, and each child sees only its own GPU through ``CUDA_VISIBLE_DEVICES``.

Parent and child talk over a pipe::

    child  -> ("discarded", reason)         a checkpoint failed its checks; the trial starts over
    child  -> ("resumed", epoch, history)   restored from an epoch checkpoint (its epochs' metrics)
    child  -> ("epoch", epoch, metrics)     parent answers True (go on) or False (stop: pruned)
    child  -> ("done", Trained) | ("error", kind, reason, traceback)

The child writes its artifacts (config, best weights, curves) into a folder the parent logs, and an
epoch checkpoint that a retry of the same parameters resumes from."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import multiprocessing
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sweeper.errors import SweeperError
from sweeper.study.config import TrialConfig

Report = Callable[[int, dict[str, float]], None]
Restored = Callable[[int, list[tuple[int, dict[str, float]]]], None]

INTERRUPTED = threading.Event()
"""Set by the main thread on Ctrl-C/SIGTERM: every worker kills its trial process and stops."""

POLL_S = 0.5  # how often a waiting worker checks for an interrupt or a dead child


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


_KINDS: dict[str, type[TrialFailure]] = {
    "oom": OutOfMemory,
    "diverged": Diverged,
    "error": Crashed,
    "disk": DiskFull,
}


# ---- one trial in a child process -------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Everything a trial process needs; pickled to the child."""

    cfg: TrialConfig
    data: Any  # data.ImageFolderData
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


def train_in_process(job: Job, report: Report, restored: Restored | None = None) -> Trained:
    """Run ``fit.run_trial`` for ``job`` in a fresh process; ``report`` runs here, in the caller.

    ``report`` may raise (a pruner's TrialPruned): the child is told to stop, and the exception goes on.
    ``restored(epoch, history)`` hears once of the epochs a checkpoint restored; they are not reported.

    Raises:
        OutOfMemory, Diverged, Crashed: the child's error, with its traceback in ``details``.
        WorkerLost: the child died without a result.
        KeyboardInterrupt: :data:`INTERRUPTED` was set; the child has been killed.
    """
    ctx = _context()
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_child_main, args=(there, job), name="sweeper-trial")
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
        return _serve(proc, here, report, restored)
    finally:
        here.close()  # a child still waiting for an answer sees EOF and exits
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _serve(proc: Any, conn: Any, report: Report, restored: Restored | None) -> Trained:
    resumed = 0
    while True:
        if INTERRUPTED.is_set():
            proc.kill()
            raise KeyboardInterrupt
        if not conn.poll(POLL_S):
            if not proc.is_alive() and not conn.poll(0):
                if INTERRUPTED.wait(2.0):  # a signal to the whole group (Slurm) reached it first
                    raise KeyboardInterrupt
                raise WorkerLost(_death(proc))
            continue
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            proc.join(timeout=5)
            raise WorkerLost(_death(proc)) from None
        if msg[0] == "discarded":
            discarded = getattr(report, "discarded", None)
            if discarded is not None:
                discarded(msg[1])
        elif msg[0] == "costs":
            measured = getattr(report, "costs", None)
            if measured is not None:
                measured(msg[1])
        elif msg[0] == "resumed":
            resumed = msg[1]
            if restored is not None:
                restored(msg[1], msg[2])
        elif msg[0] == "epoch":
            try:
                report(msg[1], msg[2])
            except BaseException:
                _send(conn, False)
                raise
            if not _send(conn, True):
                proc.join(timeout=5)
                raise WorkerLost(_death(proc))
        elif msg[0] == "done":
            return dataclasses.replace(msg[1], resumed_from=resumed)
        else:
            raise _KINDS[msg[1]](msg[2], msg[3])


def _send(conn: Any, value: bool) -> bool:
    try:
        conn.send(value)
        return True
    except (BrokenPipeError, OSError):
        return False


def _death(proc: Any) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's OOM killer sends it when host memory runs out)" if name == "SIGKILL" else ""
        return f"trial process was killed by {name}{hint}"
    return f"trial process exited with code {code} without a result"


class _Stop(Exception):
    """The parent said stop (pruned): unwind the training loop quietly."""


def _context() -> Any:
    """Trial processes fork from a fork server that has already imported torch and timm.

    Every trial still gets a fresh process (its GPU memory goes when it exits), but it skips the
    seconds of interpreter start and imports a spawned process pays. The server itself is a clean,
    single-threaded process with no CUDA context, so forking it is safe (forking this process, which
    holds threads and maybe CUDA, is not).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["sweeper.faults", "torch", "timm", "sweeper.train.fit", "sweeper.train.artifacts"]
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


def _child_main(conn: Any, job: Job) -> None:
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

    from sweeper.train import artifacts, checkpoints, fit

    if job.threads:
        torch.set_num_threads(job.threads)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        conn.send(("epoch", epoch, metrics))
        if not conn.recv():
            raise _Stop

    try:
        if job.checkpoint is not None:
            bad = checkpoints.verify(job.checkpoint, job.cfg)
            if bad:
                print(f"trial checkpoint {job.checkpoint} discarded: {bad}", file=sys.stderr, flush=True)
                conn.send(("discarded", bad))
            epoch, history = checkpoints.saved_state(job.checkpoint, job.cfg)
            if epoch:
                conn.send(("resumed", epoch, history))
        if job.latency:  # before training, on the trial's device, with nothing else of this trial running
            from sweeper.data import loaders
            from sweeper.train import costs

            conn.send(("costs", costs.latency(job.cfg, len(job.data.classes), loaders.pick_device())))
        result = fit.run_trial(job.cfg, job.data, report, metric=job.metric, checkpoint=job.checkpoint)
        artifacts.write_trial(job.out_dir, job.cfg, job.data.classes, result)
        conn.send(
            (
                "done",
                Trained(
                    result.best_epoch,
                    result.best,
                    result.num_params,
                    len(result.history),
                    history=result.history,
                ),
            )
        )
    except (_Stop, EOFError, BrokenPipeError):
        pass
    except BaseException as e:
        kind = _kind(e, fit.DivergedError)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
        if kind == "disk":
            reason = f"no space left on the device: {e}; free space, or set SWEEPER_CHECKPOINTS elsewhere"
        with contextlib.suppress(OSError):
            conn.send(("error", kind, reason, traceback.format_exc()))
    finally:
        conn.close()


def _kind(e: BaseException, diverged: type[BaseException]) -> str:
    if is_oom(e):
        return "oom"
    if isinstance(e, diverged):
        return "diverged"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "disk"
    return "error"


def is_oom(e: BaseException) -> bool:
    """Out of accelerator memory: by type (CUDA's allocator error is ``torch.OutOfMemoryError``); the
    message only as a fallback, for backends that raise a plain RuntimeError (MPS, some XPU builds)."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)


def _exit_with_worker(conn: Any) -> None:
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
