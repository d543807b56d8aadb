"""A new local MLflow store is a copy of an empty one MLflow made: the same store MLflow would make."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from mlflow import MlflowClient

from sweeper.store import fresh, tracking


def _schema(db: Path) -> tuple[dict[str, list[str]], list[tuple[str]], list[tuple[object, ...]]]:
    """Tables and indexes (each one's clauses in any order: MLflow's own migrations list a table's
    constraints in varying order), the migration head and the experiments."""
    con = sqlite3.connect(db)
    try:
        tables = {
            name: sorted((sql or "").split(", \n"))
            for name, sql in con.execute("SELECT name, sql FROM sqlite_master")
        }
        version = con.execute("SELECT * FROM alembic_version").fetchall()
        default = con.execute(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
        ).fetchall()
        return tables, version, default
    finally:
        con.close()


def test_a_seeded_store_is_the_store_mlflow_makes(tmp_path: Path) -> None:
    made = tmp_path / "by-mlflow" / "mlflow.db"
    made.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()
    seeded = tmp_path / "seeded" / "mlflow.db"
    seeded.parent.mkdir()
    assert fresh.seed(seeded)
    assert _schema(seeded) == _schema(made)  # tables, migration head, the Default experiment
    assert not fresh.seed(seeded)  # an existing store is never replaced
    t = tracking.MlflowTracker(f"sqlite:///{seeded}", "s")  # and MLflow uses it as its own
    run = t.client.create_run(t.experiment_id)
    t.client.log_metric(run.info.run_id, "val_acc", 0.5)
    assert t.client.get_run(run.info.run_id).data.metrics == {"val_acc": 0.5}


def test_processes_starting_together_keep_one_store(tmp_path: Path) -> None:
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    fresh.seed(tmp_path / "warm.db")  # the template exists: the race is on the copy's link
    results: list[bool] = []
    go = threading.Barrier(4)

    def start() -> None:
        go.wait()
        results.append(fresh.seed(db))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [False, False, False, True]
    assert not list(db.parent.glob(".mlflow-new-*"))  # no copy left behind
