"""run-study with several workers on one machine, on the default SQLite stores, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeper.store import record as record_lib
from sweeper.store import stores as stores_lib
from tests.helpers.builders import TINY, write_tiny_study
from tests.helpers.processes import REPO, interruptible, sqlite_stores, wait_for

pytestmark = pytest.mark.slow


def mlflow_runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_local_workers_share_the_default_stores_without_lock_errors(cli, image_folder: Path) -> None:
    study = write_tiny_study("local", image_folder)
    r = cli(
        "run-study", study, "--trials", "4", "--workers", "2", *TINY, env={"SWEEPER_SYSTEM_METRICS_S": "60"}
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "2 workers on CPU" in r.stdout
    assert "locked" not in out.lower()
    optuna_url, mlflow_url = sqlite_stores()
    trials = optuna.load_study(study_name="local", storage=optuna_url).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    why = [(t.number, t.state.name, record_lib.why(t)) for t in trials]
    assert len(done) == 4 and len({t.number for t in done}) == 4, why
    assert record_lib.counts(trials)["counted"] == 4, why  # anything else was surplus, never trained
    assert {t.user_attrs["worker"].split("/")[1] for t in done} == {"0", "1"}  # both workers trained
    runs = mlflow_runs(mlflow_url, "local")
    (parent,) = [r for r in runs if r.data.tags.get("sweeper.kind") == "study"]  # one, for both workers
    trial_runs = [r for r in runs if r is not parent]
    assert sorted(r.info.status for r in trial_runs) == ["FINISHED"] * 4
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trial_runs)
    assert all(
        r.data.tags["mlflow.user"] and r.data.tags["mlflow.source.name"] for r in trial_runs
    )  # lineage
    client = MlflowClient(mlflow_url)
    (dataset,) = client.get_run(trial_runs[0].info.run_id).inputs.dataset_inputs
    assert dataset.dataset.source == str(image_folder) and '"train": 30' in dataset.dataset.profile
    assert "study/study.json" in [a.path for a in client.list_artifacts(parent.info.run_id, "study")]
    assert client.get_metric_history(parent.info.run_id, "trials_complete")[-1].value == 4.0
    # MLflow's system metrics (psutil), sampled every 60 s: these trials end within the first window, which
    # MLflow alone drops
    metrics = set(client.get_run(trial_runs[0].info.run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= metrics, metrics


def test_a_second_sweep_on_the_same_sqlite_files_waits_for_the_first_then_runs(image_folder: Path) -> None:
    study = write_tiny_study("second", image_folder)
    with stores_lib.single_writer([f"sqlite:///{Path.cwd() / 'sweeper.db'}"]):  # as a running sweep holds it
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "run-study", study, "--trials", "1", *TINY],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()  # its first line: it waits, and says why and what to do instead
        assert "SQLite allows one writer process, so this one waits for it to end" in line, line
        assert "Run more trials at once with --workers K" in line
        assert not Path("mlruns/mlflow.db").exists()  # no store made while it waits
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "1/1 trials" in out, out + err


def test_ctrl_c_closes_the_running_trial_and_the_same_command_resumes_it(cli, image_folder: Path) -> None:
    study = write_tiny_study("resume", image_folder, epochs=4)
    args = ["run-study", study, "--trials", "2", *TINY]  # interrupted in trial 0: trial 1 never starts
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=interruptible,
    )
    wait_for(lambda: Path("sweeper.db").exists(), what="the study storage")
    optuna_url, mlflow_url = sqlite_stores()
    storage = stores_lib.storage(optuna_url)
    wait_for(lambda: optuna.get_all_study_names(storage), what="the study")
    st = optuna.load_study(study_name="resume", storage=storage)
    wait_for(
        lambda: [t for t in st.get_trials() if t.state == TrialState.RUNNING and t.intermediate_values],
        what="a trial past its first epoch",
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "re-run the same command to finish the study" in err and "Traceback" not in err

    first, retry = st.get_trials()  # the sweep stopped: no trial after the interrupted one
    assert first.state == TrialState.FAIL and first.user_attrs["not_counted"] == "interrupted"
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == first.number
    assert retry.params == first.params
    client = MlflowClient(mlflow_url)
    assert client.get_run(first.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    runs = [r for r in mlflow_runs(mlflow_url, "resume") if r.data.tags.get("sweeper.kind") == "trial"]
    assert [r.info.status for r in runs] == ["FAILED"]  # the interrupted trial's run, closed; no other
    assert Path("checkpoints/resume/trial-0000.pt").exists()

    r = cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = st.get_trials()
    assert record_lib.counts(trials)["counted"] == 2 and len(trials) == 3
    resumed = trials[retry.number]
    assert resumed.state == TrialState.COMPLETE and resumed.user_attrs["resumed_from_epoch"] >= 1
    assert trials[2].state == TrialState.COMPLETE and "resumed_from_epoch" not in trials[2].user_attrs
    assert "resumed after epoch" in r.stderr  # the trial's line, with the progress on stderr
    assert not list(Path("checkpoints").rglob("*.pt"))  # finished trials leave no checkpoint behind
    runs = [r for r in mlflow_runs(mlflow_url, "resume") if r.data.tags.get("sweeper.kind") == "trial"]
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"]
