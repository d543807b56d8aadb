"""A new local MLflow store in milliseconds: a copy of an empty one this machine made once.

MLflow makes a new SQLite store by running every schema migration it ships (about 2 s of CPU, each
time a study starts in a new folder). The first time, sweeper lets MLflow make an empty store in the
data dir (``$SWEEPER_DATA_DIR/mlflow-empty/<mlflow version>.db``); every later new store is a copy of
it, with the Default experiment's artifact folder and times set as MLflow would have set them here.
The copy is linked into place only where no store exists yet, so two processes starting together
keep one store; anything unexpected leaves the store to MLflow itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from sweeper.data.images import data_dir

log = logging.getLogger("sweeper")


def seed(db: Path) -> bool:
    """Make the SQLite store ``db`` from the empty template; False when ``db`` exists or the copy
    could not be made (MLflow then makes it)."""
    if db.exists():
        return False
    try:
        template = _template()
        with tempfile.TemporaryDirectory(prefix=".mlflow-new-", dir=db.parent) as tmp:
            copy = Path(tmp) / db.name
            shutil.copyfile(template, copy)
            _as_if_made_here(copy)
            os.link(copy, db)  # fails where another process made the store first: theirs is kept
        return True
    except FileExistsError:
        return False
    except Exception as e:  # any surprise: MLflow makes the store as it always does
        log.debug(f"sweeper: new MLflow store left to MLflow ({e})")
        return False


def _template() -> Path:
    """The machine's empty store for this MLflow version, made by MLflow itself the first time."""
    import mlflow
    from mlflow import MlflowClient

    template = data_dir() / "mlflow-empty" / f"{mlflow.__version__}.db"
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".made-", dir=template.parent) as tmp:
        made = Path(tmp) / "mlflow.db"
        client = MlflowClient(tracking_uri=f"sqlite:///{made.as_posix()}")
        client.search_experiments(max_results=1)  # MLflow makes and migrates its tables
        with contextlib.suppress(FileExistsError):
            os.link(made, template)  # whole, or not at all (another process's is as good)
    return template


def _as_if_made_here(db: Path) -> None:
    """The Default experiment as MLflow makes it from this working directory: artifacts under
    ``<cwd>/mlruns/0`` (MLflow's default artifact root is ``./mlruns``), created now."""
    now = int(time.time() * 1000)
    where = os.path.join(os.path.abspath("mlruns"), "0")
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute(
            "UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
            "WHERE experiment_id = 0",
            (where, now, now),
        )
