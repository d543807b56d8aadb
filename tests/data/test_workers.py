"""Loader workers are forked from the process that owns the loader, whatever its own start method."""

from __future__ import annotations

import multiprocessing

from sweeper.data.workers import worker_context


def test_loader_workers_fork_even_where_the_default_is_forkserver() -> None:
    ctx = worker_context(2)
    assert ctx is not None and ctx.get_start_method() == "fork"
    assert multiprocessing.get_context("forkserver").get_start_method() != ctx.get_start_method()
    assert worker_context(0) is None  # no workers: the main process loads
