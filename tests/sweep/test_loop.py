"""The sweep loop and the trial lifecycle: the trial count, the SQLite mechanism, the failure taxonomy."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState, create_trial

from sweeper.data import images as data_lib
from sweeper.errors import SweeperError
from sweeper.store import record as record_lib
from sweeper.store import stores, tracking
from sweeper.study import spec as spec_lib
from sweeper.sweep import loop as sweep
from sweeper.sweep import trial as trial_lib
from tests.helpers.builders import TINY, load_study, tiny_study
from tests.helpers.processes import FAULT_MODELS, REPO


def finished(number: int, state: TrialState, **user_attrs: object) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, user_attrs=user_attrs)
    t.number = number
    return t


# ---- the count ----------------------------------------------------------------------------------


def test_counts_leave_out_interrupted_surplus_and_retried_trials() -> None:
    lost = finished(1, TrialState.FAIL)
    retry = create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 1, "retry_history": [1]})
    retry.number = 4
    trials = [
        finished(0, TrialState.COMPLETE),
        lost,
        finished(2, TrialState.FAIL, not_counted="interrupted"),
        finished(3, TrialState.FAIL, fail_reason="ValueError: x"),
        retry,
        finished(5, TrialState.PRUNED),
    ]
    c = record_lib.counts(trials)
    assert c == {
        "complete": 1,
        "pruned": 1,
        "fail": 1,
        "running": 0,
        "waiting": 1,
        "not_counted": 2,
        "counted": 2,  # complete and pruned: a failed trial does not count
    }


def test_the_same_error_three_times_in_a_row_stops_the_sweep() -> None:
    streak = sweep._Streak(3)
    fail = [
        finished(i, TrialState.FAIL, fail_reason=f"RuntimeError: shapes (8x{i}) and (97x3)") for i in range(5)
    ]
    streak(None, fail[0])  # type: ignore[arg-type]
    streak(None, fail[1])  # type: ignore[arg-type]
    streak(None, finished(9, TrialState.COMPLETE))  # type: ignore[arg-type]  # a success resets it
    streak(None, finished(8, TrialState.FAIL, worker_lost="killed"))  # type: ignore[arg-type]  # not its fault
    streak(None, fail[2])  # type: ignore[arg-type]
    streak(None, fail[3])  # type: ignore[arg-type]
    assert streak.error is None
    streak(None, fail[4])  # type: ignore[arg-type]
    assert streak.error is not None and "3 trials in a row failed with the same error" in streak.error
    assert "RuntimeError: shapes (8x4) and (97x3)" in streak.error


def test_storage_urls() -> None:
    assert stores.with_driver("postgresql://u:pw@h:5432/db") == "postgresql+psycopg://u:pw@h:5432/db"
    assert stores.with_driver("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert "pw" not in stores.display_url("postgresql+psycopg://u:pw@h:5432/db")
    with pytest.raises(SweeperError, match=r"cannot open study storage 'postgresql\+psycopg://u:\*\*\*@"):
        stores.storage("postgresql://u:secret@127.0.0.1:1/db")


def quick(trial: optuna.Trial) -> float:
    """A real objective without training, for the run loop's bookkeeping."""
    return trial.suggest_float("x", 0.0, 1.0)


@pytest.mark.slow
def test_workers_of_one_process_run_exactly_n_trials(tmp_path: Path, image_folder: Path) -> None:
    spec = tiny_study(tmp_path, image_folder, "exact")
    st = sweep.run(spec, 7, [quick, quick, quick])
    trials = st.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 7 and record_lib.counts(trials)["counted"] == 7
    assert all(t.user_attrs["not_counted"].startswith("surplus") for t in trials if t not in done)
    assert sweep.run(spec, 7, [quick, quick]).get_trials() == trials  # resuming a full study runs nothing


@pytest.mark.slow
def test_a_trial_left_running_by_a_dead_sweep_is_requeued_at_once(tmp_path: Path, image_folder: Path) -> None:
    spec = tiny_study(tmp_path, image_folder, "orphan")
    dead = optuna.create_study(study_name="orphan", storage=stores.storage(None), direction="maximize").ask()
    x = dead.suggest_float("x", 0.0, 1.0)  # its process was SIGKILLed here: RUNNING, heartbeat fresh
    st = sweep.run(spec, 1, quick)
    first, retry = st.get_trials()
    assert first.state == TrialState.FAIL  # under the single-writer lock, no waiting for the grace period
    assert retry.state == TrialState.COMPLETE and retry.params == {"x": x}
    assert retry.system_attrs["failed_trial"] == first.number
    assert record_lib.counts(st.get_trials())["counted"] == 1


@pytest.mark.slow
def test_workers_of_one_process_share_sqlite_without_lock_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mechanism under the local workers: BEGIN IMMEDIATE transactions, heartbeats on, 4 threads."""
    monkeypatch.setenv("SWEEPER_HEARTBEAT", "1")
    url = f"sqlite:///{tmp_path / 'hammer.db'}"
    store = stores.storage(url)
    optuna.create_study(study_name="hammer", storage=store)
    errors: list[BaseException] = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        for step in range(3):
            trial.report(x * step, step)
        trial.set_user_attr("worker", threading.current_thread().name)
        return x * x

    def work() -> None:
        try:
            st = optuna.load_study(study_name="hammer", storage=store)
            st.optimize(objective, n_trials=10)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    done = optuna.load_study(study_name="hammer", storage=url).get_trials()
    assert len(done) == 40 and all(t.state == TrialState.COMPLETE for t in done)
    assert len({t.number for t in done}) == 40


# ---- the failure taxonomy -------------------------------------------------------------------------


def run_one(spec: spec_lib.Study, trials: int = 1) -> tuple[optuna.Study, tracking.MlflowTracker]:
    tracker = tracking.MlflowTracker(None, spec.name)
    objective = trial_lib.make_objective(spec, data_lib.scan(spec.data_root), tracker)
    return sweep.run(spec, trials, objective, tracker=tracker), tracker


@pytest.mark.slow
def test_out_of_memory_is_retried_once_at_half_the_micro_batch(
    cli, tmp_path: Path, image_folder: Path
) -> None:
    # A CLI process: the fault models register through sitecustomize, which the trial processes' fork
    # server picks up only from the environment it starts with.
    spec = tiny_study(tmp_path, image_folder, "oom", backbone="oom_resnet")  # holds 4 images per pass
    env = {"PYTHONPATH": f"{FAULT_MODELS}{os.pathsep}{REPO}"}
    r = cli("run-study", str(spec.path), "--trials", "1", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    st = optuna.load_study(study_name="oom", storage=f"sqlite:///{Path.cwd()}/sweeper.db")
    (t,) = st.get_trials()
    assert t.state == TrialState.COMPLETE
    assert t.user_attrs[record_lib.OOM_RETRY] == (
        "out of memory at micro_batch 8; retried at 4 with gradient accumulation, batch_size 8 unchanged"
    )
    run = MlflowClient(f"sqlite:///{Path.cwd()}/mlruns/mlflow.db").get_run(
        t.user_attrs[record_lib.MLFLOW_RUN]
    )
    assert run.info.status == "FINISHED" and run.data.tags["micro_batch_used"] == "4"
    assert run.data.params["micro_batch"] == "None"  # the searched config, as sampled


@pytest.mark.slow
def test_a_diverged_trial_is_recorded_infeasible(tmp_path: Path, image_folder: Path) -> None:
    spec = tiny_study(
        tmp_path, image_folder, "nan", optimizer="sgd", lr_backbone=1e6, lr_head=1e6, warmup_epochs=0
    )
    st, tracker = run_one(spec)
    (t,) = st.get_trials()
    assert t.state == TrialState.COMPLETE and t.value == 0.0
    assert t.constraints == {"diverged": 1.0}  # samplers that model constraints avoid the region
    assert t.user_attrs[record_lib.INFEASIBLE].startswith("diverged: DivergedError: training loss is nan")
    run = MlflowClient(tracker.uri).get_run(t.user_attrs[record_lib.MLFLOW_RUN])
    assert run.info.status == "FAILED" and run.data.tags["state"] == "INFEASIBLE"
    with pytest.raises(SweeperError, match="no complete trial"):  # never the best trial
        record_lib.best_trial(st)


@pytest.mark.slow
def test_a_broken_configuration_stops_the_sweep_after_three_identical_failures(
    cli, image_folder: Path
) -> None:
    study = Path("broken.yaml")
    space = {"lr_head": {"float": [1e-3, 1e-1], "log": True}}
    study.write_text(
        yaml.safe_dump(
            {
                "name": "broken",
                "data": {"root": str(image_folder)},
                "epochs": 1,
                "pruner": "none",
                "space": space,
            }
        )
    )
    env = {"PYTHONPATH": f"{FAULT_MODELS}{os.pathsep}{REPO}"}
    r = cli("run-study", str(study), "--trials", "8", *TINY, "--set", "backbone=broken_resnet", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopped after 3 trials in a row failed with the same error")
    assert "mat1 and mat2 shapes cannot be multiplied" in last
    st = optuna.load_study(study_name="broken", storage=f"sqlite:///{Path.cwd()}/sweeper.db")
    assert [t.state for t in st.get_trials()] == [TrialState.FAIL] * 3
    client = MlflowClient(f"sqlite:///{Path.cwd()}/mlruns/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("broken").experiment_id], "tags.`sweeper.kind` != 'study'"
    )
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 3
    error = Path(client.download_artifacts(runs[0].info.run_id, "error.txt", str(Path.cwd())))
    assert "Traceback" in error.read_text()


def test_a_resumed_study_does_not_repeat_its_params(tmp_path) -> None:

    spec = load_study(
        tmp_path,
        "name: s\ndata: {root: builtin:digits}\nsampler: {name: random, seed: 0}\n"
        "space:\n  lr_head: {float: [1.0e-4, 1.0e-2], log: true}\n",
    )
    url = f"sqlite:///{tmp_path}/s.db"
    drawn = []
    for _ in range(2):  # two runs of the same command, one trial each
        st = sweep.open_study(spec, url)
        t = st.ask()
        drawn.append(t.suggest_float("lr_head", 1e-4, 1e-2, log=True))
        st.tell(t, 0.5)
    assert drawn[0] != drawn[1]
    assert sweep.sampler_seed(0, 0, 0) == 0
    assert len({sweep.sampler_seed(0, w, n) for w in range(3) for n in range(3)}) == 9


@pytest.mark.parametrize("name", ["quickstart", "quickstart-tradeoff"])
def test_every_study_names_its_objectives_for_optunas_tools(name: str) -> None:
    spec = spec_lib.load(name)
    st = sweep.open_study(spec, None, store=optuna.storages.InMemoryStorage())
    assert st.metric_names == [m for m, _ in spec.objectives]  # optuna-dashboard: not "Objective 0"
    assert len(st.metric_names) == (2 if spec.multi else 1)


@pytest.mark.slow
def test_failed_trials_do_not_count_and_many_failures_stop_the_sweep(
    tmp_path: Path, image_folder: Path
) -> None:
    spec = tiny_study(tmp_path, image_folder, "flaky")
    calls = {"n": 0}

    def flaky(trial: optuna.Trial) -> float:  # every other trial fails, each with its own message
        calls["n"] += 1
        x = trial.suggest_float("x", 0.0, 1.0)
        if calls["n"] % 2:
            trial.set_user_attr("fail_reason", f"ValueError: flake {'abc'[calls['n'] % 3]}")
            raise ValueError("flake")
        return x

    st = sweep.run(spec, 3, flaky)
    c = record_lib.counts(st.get_trials())
    assert c["counted"] == 3 and c["complete"] == 3 and c["fail"] == 3  # N trials that ran, failures aside

    def broken(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 1.0)
        calls["n"] += 1
        trial.set_user_attr("fail_reason", f"RuntimeError: {'abcdefg'[calls['n'] % 7]}")  # never twice alike
        raise RuntimeError("broken")

    with pytest.raises(SweeperError, match="stopped after 10 failed trials in this run"):
        sweep.run(dataclasses.replace(spec, name="broken"), 5, broken)


def test_failures_without_a_reason_count_too() -> None:
    """The guards once counted only failures with a reason: a store that failed every trial in ``finish``
    without one burnt the whole budget."""
    streak = sweep._Streak(3, total=1)
    for i in range(3):
        streak(None, finished(i, TrialState.FAIL))  # type: ignore[arg-type]
    assert streak.failed == 3
    assert streak.error is not None and "failed without a recorded reason" in streak.error
