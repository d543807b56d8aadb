"""Loader workers are forked from the process that owns the loader, whatever its own start method, and
as many as the cores allow."""

from __future__ import annotations

import multiprocessing

import pytest

from sweeper.data import loaders
from sweeper.data.workers import worker_context
from tests.helpers.builders import trial_config


def test_loader_workers_fork_even_where_the_default_is_forkserver() -> None:
    ctx = worker_context(2)
    assert ctx is not None and ctx.get_start_method() == "fork"
    assert multiprocessing.get_context("forkserver").get_start_method() != ctx.get_start_method()
    assert worker_context(0) is None  # no workers: the main process loads


def test_a_cache_build_decodes_on_every_core_and_a_loader_leaves_one_for_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loaders, "cores", lambda: 16)
    auto = trial_config(num_workers=None)
    assert loaders.build_workers(auto) == 16 and loaders.workers(auto) == 8  # loaders: at most 8
    monkeypatch.setattr(loaders, "cores", lambda: 2)
    assert loaders.build_workers(auto) == 2 and loaders.workers(auto) == 1
    monkeypatch.setattr(loaders, "cores", lambda: 96)
    assert loaders.build_workers(auto) == 32
    assert loaders.build_workers(trial_config(num_workers=0)) == 0  # a study's own count is kept
    assert loaders.build_workers(trial_config(num_workers=3)) == 3
