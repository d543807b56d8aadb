"""Where the repository is, and the small helpers of tests that start processes (all of them marked slow)."""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
"""The repository root: what a spawned ``python -m sweeper`` needs on PYTHONPATH."""

FAULT_MODELS = Path(__file__).resolve().parent / "fault_models"
"""A folder whose ``sitecustomize.py`` registers test-only timm models in every process started with it."""


def interruptible() -> None:
    """``preexec_fn`` for a CLI process the test will Ctrl-C (SIGINT).

    A non-interactive shell starts background jobs with SIGINT ignored, and Python then never raises
    KeyboardInterrupt; a user's terminal doesn't do that, so the process gets the default handling back.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(check: Callable[[], object], timeout: float = 300, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def sqlite_stores() -> tuple[str, str]:
    """The default stores of the working directory, as absolute URIs (Optuna storage, MLflow tracking).

    Absolute: MLflow caches stores by URI, and every test has its own working directory.
    """
    return f"sqlite:///{Path.cwd()}/sweeper.db", f"sqlite:///{Path.cwd()}/mlruns/mlflow.db"


@contextlib.contextmanager
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private TMPDIR (staging folders checked are the test's own) with a short path: a fork server's
    socket lives there, and a Unix socket's path is limited to about 100 characters, which pytest's
    nested temp folders (under xdist, deeper still) exceed."""
    tmp = Path(tempfile.mkdtemp(prefix="sw-", dir="/tmp" if Path("/tmp").is_dir() else None))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    try:
        yield tmp
    finally:
        # multiprocessing removes its own folder here at exit (this process's fork server, if any)
        own = multiprocessing.current_process()._config.get("tempdir")
        for part in tmp.iterdir():
            if str(part) != own:
                shutil.rmtree(part, ignore_errors=True) if part.is_dir() else part.unlink(missing_ok=True)
        if own is None or not own.startswith(str(tmp)):
            shutil.rmtree(tmp, ignore_errors=True)
