"""One study shared by several run-study processes, as on several machines: a real PostgreSQL storage
and a real MLflow tracking server (backed by PostgreSQL), both started by the tests on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeper.store import record as record_lib
from sweeper.store import stores
from tests.helpers.builders import TINY, write_tiny_study
from tests.helpers.processes import REPO, wait_for
from tests.helpers.servers import create_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def sweep(args: list[str], storage: str, tracking: str, **env: str) -> subprocess.Popen[str]:
    """A run-study process, as another machine would start it: the URLs come from the environment."""
    full = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SWEEPER_STORAGE": storage,
        "MLFLOW_TRACKING_URI": tracking,
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper", "run-study", *args],
        env=full,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    return out + err


def test_three_workers_on_postgres_run_exactly_n_trials(
    pg_server: str, mlflow_url: str, image_folder: Path
) -> None:
    storage = create_database(pg_server, "three")
    study = write_tiny_study("dist-three", image_folder)
    procs = [sweep([study, "--trials", "5", *TINY], storage, mlflow_url) for _ in range(3)]
    outputs = [finish(p) for p in procs]
    assert all("locked" not in o.lower() for o in outputs)

    trials = optuna.load_study(study_name="dist-three", storage=stores.with_driver(storage)).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 5 and len({t.number for t in done}) == 5
    assert record_lib.counts(trials)["counted"] == 5
    others = [(t.number, t.state.name, t.user_attrs) for t in trials if t not in done]
    assert all(str(attrs.get("not_counted", "")).startswith("surplus") for _, _, attrs in others), others

    client = MlflowClient(mlflow_url)
    runs = client.search_runs(
        [client.get_experiment_by_name("dist-three").experiment_id], "tags.`sweeper.kind` = 'trial'"
    )
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 5  # every run closed, with its state
    assert {r.data.tags["trial_number"] for r in runs} == {str(t.number) for t in done}
    assert all(r.data.tags["state"] == "COMPLETE" for r in runs)
    exp = client.get_experiment_by_name("dist-three")
    studies = client.search_runs([exp.experiment_id], "tags.`sweeper.kind` LIKE 'study%'")
    assert {r.info.status for r in studies} == {"FINISHED"}  # closed by the last worker, not left RUNNING
    (study_run,) = [r for r in studies if r.data.tags["sweeper.kind"] == "study"]  # one; the rest duplicates
    assert not [k for k in study_run.data.tags if k.startswith("sweeper.sweeping.")]
    page = f"{mlflow_url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    assert all(f"compare trials in the MLflow UI: {page}&viewStateShareKey=sweeper" in o for o in outputs)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def test_a_worker_killed_mid_trial_is_recovered_by_another(
    pg_server: str, mlflow_url: str, image_folder: Path
) -> None:
    storage = create_database(pg_server, "killed")
    study = write_tiny_study("dist-kill", image_folder, epochs=4)
    args = [study, "--trials", "3", *TINY]
    fast = {"SWEEPER_HEARTBEAT": "1", "SWEEPER_GRACE": "4"}  # seconds; the defaults are 20 and 60
    victim = sweep(args, storage, mlflow_url, **fast)
    wait_for(lambda: _has_study(storage), what="the study")
    st = optuna.load_study(study_name="dist-kill", storage=stores.with_driver(storage))
    mine = f":{victim.pid}/"  # host:pid/slot of the worker that ran a trial

    def victims_trial_past_an_epoch() -> list[optuna.trial.FrozenTrial]:
        return [
            t
            for t in st.get_trials()
            if t.state == TrialState.RUNNING
            and t.intermediate_values
            and mine in t.user_attrs.get("worker", "")
        ]

    (trial,) = wait_for(victims_trial_past_an_epoch, what="an epoch of the victim's trial")
    survivor = sweep(args, storage, mlflow_url, **fast)
    orphans = children(victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finish(survivor)

    deadline = time.monotonic() + 10  # the trial process notices its worker died, and exits
    while any(Path(f"/proc/{c}").exists() for c in orphans) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{c}").exists() for c in orphans)

    trials = st.get_trials()
    assert trials[trial.number].state == TrialState.FAIL  # failed as stale by the surviving worker
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert retry.state == TrialState.COMPLETE and retry.params == trial.params
    assert retry.user_attrs["resumed_from_epoch"] >= 1  # from the dead worker's epoch checkpoint
    assert record_lib.counts(trials)["counted"] == 3

    client = MlflowClient(mlflow_url)
    runs = client.search_runs(
        [client.get_experiment_by_name("dist-kill").experiment_id], "tags.`sweeper.kind` != 'study'"
    )
    assert "RUNNING" not in {r.info.status for r in runs}
    lost = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert lost.info.status == "FAILED" and "worker lost" in lost.data.tags["reason"]


def _has_study(storage: str) -> bool:
    try:
        return "dist-kill" in optuna.get_all_study_names(stores.with_driver(storage))
    except Exception:  # tables not created yet
        return False
