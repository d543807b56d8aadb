"""Test-only fault injection: named points where the fault suite pauses, breaks or kills a run.

Unset in normal use: :func:`hit` is one environment lookup and returns. The fault suite
(``tests/e2e/test_faults.py``) sets ``SWEEPER_FAULT`` to a comma-separated list of ``POINT:ACTION``:

- ``pause``: write ``$SWEEPER_FAULT_DIR/POINT`` (this process's pid), then wait until the test creates
  ``POINT.go``. The test sends its signal (SIGKILL to the group, the worker or the trial process,
  SIGTERM, SIGINT twice) while the process stands still at the point: deterministic, no sleeps.
  A point pauses once per test folder (a retry of the same trial passes through).
- ``enospc``: raise ``OSError(ENOSPC)``, as a full disk does.

Points: ``forkserver`` (the fork server, before it is ready); ``setup-before-run`` and
``setup-after-run`` (the trial's set-up: before its MLflow run exists; after, before the trial links
it); ``mid-epoch`` (a training step, from the test model ``fault_resnet``); ``epoch`` (the worker, at
an epoch boundary); ``checkpoint-write`` (between writing a checkpoint's temporary file and renaming
it); ``finish`` (the trial's end, before anything is written).
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

ENV = "SWEEPER_FAULT"


def hit(point: str) -> None:
    """Act out the fault planted at ``point``, if any (test-only; nothing happens when unset)."""
    planted = os.environ.get(ENV)
    if not planted:
        return
    for item in planted.split(","):
        name, _, action = item.partition(":")
        if name == point:
            _act(point, action)


def _act(point: str, action: str) -> None:
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "pause":
        folder = Path(os.environ.get("SWEEPER_FAULT_DIR", "."))
        marker = folder / point
        if marker.exists():
            return
        marker.write_text(str(os.getpid()))
        while not (folder / f"{point}.go").exists():
            time.sleep(0.05)
        return
    raise ValueError(f"{ENV}: unknown action {action!r} at {point!r}; expected pause or enospc")


def in_fork_server() -> None:
    """The ``forkserver`` point, reached while the fork server imports its preloads (see workers)."""
    if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:
        hit("forkserver")


in_fork_server()  # the fork server imports this module first among its preloads
