"""How many worker processes the data work gets, and how they start (the trial's loaders and the cache
build alike)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os


def cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_context(n: int) -> multiprocessing.context.BaseContext | None:
    """How a loader's workers start: forked from this process, where the OS can fork.

    A trial process is itself started from a fork server, and a process started that way inherits the
    forkserver start method: a loader left to the default starts a new, empty fork server, and every
    worker then imports torch, timm and sweeper afresh (seconds each) as that server's child, so it
    outlives an interrupted trial. Forked, a worker shares the trial's imported modules and dataset and
    is the trial's own child: torch's worker watchdog ends it when the trial process dies.
    """
    if n == 0 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return multiprocessing.get_context("fork")
