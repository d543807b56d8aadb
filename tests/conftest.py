"""Shared fixtures: tiny real image folders, an isolated working directory, and the CLI as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "backbone=test_resnet", "--set", "img_size=32", "--set", "num_workers=0"]
"""CLI args that pin a tiny, fast backbone for tests."""


def _pattern(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A class-specific image: a dominant color and a stripe orientation, plus noise, so it is learnable."""
    img = rng.integers(0, 60, (size, size, 3)).astype(np.int16)
    img[..., label % 3] += 150
    if label % 2:
        img[::4, :, :] += 60
    else:
        img[:, ::4, :] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("bird", "insect", "plant"),
    n_train: int = 10,
    n_val: int = 5,
    n_test: int = 6,
    size: int = 24,
    seed: int = 0,
) -> Path:
    """Write ROOT/train/<class>, ROOT/val/<class>, ROOT/test in mixed formats (RGB/gray/RGBA PNG, JPEG)."""
    rng = np.random.default_rng(seed)
    modes = ["png", "jpg", "gray", "rgba"]

    def save(arr: np.ndarray, path_stem: Path, k: int) -> None:
        mode = modes[k % len(modes)]
        im = Image.fromarray(arr)
        path_stem.parent.mkdir(parents=True, exist_ok=True)
        if mode == "jpg":
            im.save(path_stem.with_suffix(".jpg"), quality=95)
        elif mode == "gray":
            im.convert("L").save(path_stem.with_suffix(".png"))
        elif mode == "rgba":
            im.convert("RGBA").save(path_stem.with_suffix(".png"))
        else:
            im.save(path_stem.with_suffix(".png"))

    k = 0
    for label, c in enumerate(classes):
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                save(_pattern(rng, label, size), root / split / c / f"{c}_{i:03d}", k)
                k += 1
    for i in range(n_test):
        save(_pattern(rng, i % len(classes), size), root / "test" / f"img_{i:03d}", i)
    return root


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


def interruptible() -> None:
    """``preexec_fn`` for a CLI process the test will Ctrl-C (SIGINT).

    A non-interactive shell starts background jobs with SIGINT ignored, and Python then never raises
    KeyboardInterrupt; a user's terminal doesn't do that, so the process gets the default handling back.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_study(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


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


# ---- real servers for the scale-out tests (see tests/servers.py) ----------------------------------


@pytest.fixture(scope="session")
def pg_server() -> object:
    """One PostgreSQL cluster for the session; each test creates its own database in it."""
    from tests.servers import postgres

    with postgres() as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_url(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> object:
    """One MLflow tracking server for the session, backed by PostgreSQL; tests use distinct study names."""
    from tests.servers import create_database, mlflow_server

    with mlflow_server(create_database(pg_server, "mlflow"), tmp_path_factory.mktemp("mlartifacts")) as url:
        yield url
