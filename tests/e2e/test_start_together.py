"""Workers started at the same instant on fresh stores (a Slurm array, an Indexed Job): the schemas are
made once, every worker runs (PostgreSQL at once; SQLite, which has one writer process, in turns, each
waiting one saying why), and no one sees a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeper.store import record as rec
from tests.helpers.builders import TINY, write_tiny_study
from tests.helpers.processes import REPO


def start_together(n: int, args: list[str]) -> list[subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sweeper", "run-study", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(n)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
@pytest.mark.postgres
def test_four_workers_on_fresh_postgresql_stores_all_run(image_folder: Path, pg_server: str) -> None:
    from tests.helpers.servers import create_database

    storage = create_database(pg_server, "together_optuna")
    tracking = create_database(pg_server, "together_mlflow")
    study = write_tiny_study("together", image_folder)
    runs = start_together(
        4, [study, "--trials", "4", *TINY, "--storage", storage, "--tracking-uri", tracking]
    )
    for r in runs:
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
    trials = optuna.load_study(study_name="together", storage=storage).get_trials()
    assert rec.counts(trials)["counted"] == 4


@pytest.mark.slow
def test_four_workers_on_a_fresh_sqlite_store_all_run_in_turns(image_folder: Path) -> None:
    study = write_tiny_study("together", image_folder)
    runs = start_together(4, [study, "--trials", "2", *TINY])
    waited = 0
    for r in runs:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "2/2 trials" in r.stdout, r.stdout + r.stderr
        waited += "SQLite allows one writer process, so this one waits for it to end" in r.stderr
    assert waited >= 1  # at least the three that started last waited (one may find the first gone)
    trials = optuna.load_study(
        study_name="together", storage=f"sqlite:///{Path.cwd()}/sweeper.db"
    ).get_trials()
    assert rec.counts(trials)["counted"] == 2
