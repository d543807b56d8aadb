"""Shared fixtures: tiny real image folders, an isolated working directory, and the CLI as a user runs it."""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

# One torch (OpenMP) thread per process, set before anything imports torch, and inherited by the CLI and
# trial processes the slow tests start: the tiny models here gain nothing from more, and on 2 shared cores
# pytest, its sweeps and their trial processes otherwise fight over them (about 2x slower under load). A
# value set outside wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.helpers.builders import make_image_folder  # noqa: E402
from tests.helpers.processes import REPO  # noqa: E402


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture(autouse=True)
def isolated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Run each test in its own directory with its own stores; no network for model weights."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    shared = tmp_path_factory.getbasetemp() / "sweeper-data"  # the digits folder is built once per session
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(shared))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SWEEPER_STUDIES_DIR", str(REPO / "sweeper" / "studies"))
    for var in ("MLFLOW_TRACKING_URI", "SWEEPER_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    return work


@pytest.fixture(autouse=True)
def units_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the fast layer honest: a test without the ``slow`` mark that starts a process fails, naming it.

    The unit layer (``make test-fast``, ``-m 'not slow'``) runs no process, no training and no server; a
    test that needs one is marked ``@pytest.mark.slow`` (or its module sets ``pytestmark``).
    """
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(
            f"{request.node.nodeid} starts a process but is not marked slow: "
            "mark it @pytest.mark.slow, or test the code in this process"
        )

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "system", refuse)


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``sweeper ARGS`` in a subprocess, exactly as a user would, in the test's working directory."""

    def run(
        *args: str, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "sweeper", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            stdin=subprocess.DEVNULL,
        )

    return run


# ---- real servers for the scale-out tests (see tests/helpers/servers.py) ----------------------------------


@pytest.fixture(scope="session")
def pg_server() -> object:
    """One PostgreSQL cluster for the session; each test creates its own database in it."""
    from tests.helpers.servers import postgres

    with postgres() as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_url(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> object:
    """One MLflow tracking server for the session, backed by PostgreSQL; tests use distinct study names."""
    from tests.helpers.servers import create_database, mlflow_server

    with mlflow_server(create_database(pg_server, "mlflow"), tmp_path_factory.mktemp("mlartifacts")) as url:
        yield url
