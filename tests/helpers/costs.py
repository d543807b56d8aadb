"""A pytest plugin that writes each test's wall time and CPU time (its own and its waited-for child
processes') to ``$SWEEPER_TEST_COSTS/<worker>.tsv``: what a test costs on a 2-core budget, whatever else
the machine is running. ``pytest -p tests.helpers.costs``."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    wall, cpu = time.perf_counter(), _cpu()
    yield
    folder = os.environ.get("SWEEPER_TEST_COSTS")
    if folder:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with (Path(folder) / f"{worker}.tsv").open("a") as out:
            out.write(f"{item.nodeid}\t{time.perf_counter() - wall:.1f}\t{_cpu() - cpu:.1f}\n")
