"""sweeper doctor: each kind of leftover, planted in real stores, is found; --repair fixes what is safe."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.store import record as rec
from sweeper.store import stores, tracking
from tests.helpers.processes import private_tmp


@pytest.fixture
def own_tmp(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> Iterator[Path]:
    """A private temp folder: the doctor looks at staging folders there, never at other processes'."""
    with private_tmp(monkeypatch) as tmp:
        yield tmp


DEAD_PID = "4194300"  # above the default pid_max: never a live process


def add(
    study: optuna.Study,
    tracker: tracking.MlflowTracker,
    x: float,
    state: TrialState,
    run: str | None,
    queued: bool = False,
) -> int:
    """A finished trial with param ``x``; ``run``: its run's MLflow state (None: no run); ``queued``:
    its params were enqueued (as sweeper queues starts, design runs and retries)."""
    number = len(study.get_trials(deepcopy=False))
    attrs: dict[str, object] = {rec.FAIL_REASON: "ValueError: planted"} if state == TrialState.FAIL else {}
    if run is not None:
        r = tracker.start(f"trial-{number:04d}", {"x": x}, {"trial_number": number, "state": "RUNNING"})
        r.end(run)
        attrs[rec.MLFLOW_RUN] = r.run_id
    study.add_trial(
        create_trial(
            state=state,
            value=0.5 if state == TrialState.COMPLETE else None,
            params={"x": x},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs=attrs,
            system_attrs={"fixed_params": {"x": x}} if queued else None,
        )
    )
    return number


def plant(tmp: Path) -> tuple[optuna.Study, tracking.MlflowTracker]:
    """One study with every kind of leftover a killed sweep can leave."""
    study = optuna.create_study(study_name="planted", storage=stores.storage(None))
    tracker = tracking.MlflowTracker(None, "planted")
    add(study, tracker, 0.1, TrialState.COMPLETE, "COMPLETE")  # 0: clean
    running = study.ask()  # 1: RUNNING, its process killed; its run RUNNING too
    running.suggest_float("x", 0, 1)
    r = tracker.start("trial-0001", {}, {"trial_number": 1, "state": "RUNNING"})
    running.set_user_attr(rec.MLFLOW_RUN, r.run_id)
    add(study, tracker, 0.2, TrialState.FAIL, None)  # 2: no run
    tracker.start("trial-0099", {}, {"trial_number": 99, "state": "RUNNING"})  # a run with no trial
    mismatch = add(study, tracker, 0.3, TrialState.COMPLETE, "COMPLETE")  # 3: run says FAILED
    MlflowClient(tracker.uri).set_terminated(study.trials[mismatch].user_attrs[rec.MLFLOW_RUN], "FAILED")
    add(study, tracker, 0.1, TrialState.COMPLETE, "COMPLETE", queued=True)  # 4: 0's params queued again
    add(study, tracker, 0.1, TrialState.COMPLETE, "COMPLETE")  # 5: the sampler proposed them again: fine
    old = add(study, tracker, 0.4, TrialState.PRUNED, "PRUNED")  # 6: an older sweeper closed it KILLED
    MlflowClient(tracker.uri).set_terminated(study.trials[old].user_attrs[rec.MLFLOW_RUN], "KILLED")
    folder = Path("checkpoints/planted")
    folder.mkdir(parents=True)
    (folder / "trial-0000.pt").write_bytes(b"x")  # trial 0 is finished: stale
    (folder / "trial-0001.pt").write_bytes(b"x")  # trial 1 will be re-queued: kept
    (folder / f".trial-0003.pt.{DEAD_PID}.tmp").write_bytes(b"x")  # half-written
    (tmp / f"sweeper-artifacts-{DEAD_PID}-{tracking._tag('planted')}-abc").mkdir()
    (tmp / f"sweeper-artifacts-{os.getpid()}-{tracking._tag('planted')}-live").mkdir()  # alive: not stale
    (tmp / f"sweeper-artifacts-{DEAD_PID}-{tracking._tag('another')}-abc").mkdir()  # not this study's
    refit = tracker.start("refit-trial-0000", {}, {tracking.KIND: "refit", "state": "RUNNING"})
    MlflowClient(tracker.uri).set_tag(refit.run_id, tracking.PROCESS, f"{socket.gethostname()}:{DEAD_PID}")
    killed = f"{socket.gethostname()}:{DEAD_PID}"  # a sweep killed while it held the study run
    MlflowClient(tracker.uri).set_tag(tracker.study_run_id(), tracking.SWEEPING + "killed", killed)
    MlflowClient(tracker.uri).update_run(tracker.study_run_id(), status="RUNNING")
    return study, tracker


@pytest.mark.slow
def test_doctor_finds_each_leftover_and_repair_fixes_what_is_safe(cli, own_tmp: Path) -> None:
    study, tracker = plant(own_tmp)
    env = {"TMPDIR": str(own_tmp)}
    r = cli("doctor", "planted", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    kinds = sorted(line.split(":")[0] for line in lines[:-1])
    assert kinds == [
        "checkpoint",
        "checkpoint",
        "dead-run",
        "dead-run",
        "duplicate",
        "mismatch",
        "mismatch",
        "no-run",
        "orphan-run",
        "running",
        "staging",
    ], r.stdout
    assert "running: trial 1: RUNNING with no live worker" in lines
    assert "no-run: trial 2: FAIL with no MLflow run" in lines
    assert "duplicate: trial 4: the same params as trial 0, both counted (not repairable)" in lines
    assert (
        f"dead-run: study run {tracker.study_run_id()}: RUNNING, but its sweep ended without closing it "
        "(killed)" in lines
    )
    assert lines[-1] == "study planted: 11 problems"

    r = cli("doctor", "planted", "--repair", env=env)
    assert r.returncode == 1, r.stdout + r.stderr  # the duplicate needs a person
    assert r.stdout.count("repaired ") == 10, r.stdout
    assert r.stdout.splitlines()[-2:] == [
        "duplicate: trial 4: the same params as trial 0, both counted (not repairable)",
        "study planted: 1 problem",
    ]
    j = cli("doctor", "planted", "--json", env=env)
    assert j.returncode == 1 and json.loads(j.stdout) == {
        "study": "planted",
        "problems": 1,
        "clean": False,
        "repaired": False,
        "lines": ["duplicate: trial 4: the same params as trial 0, both counted (not repairable)"],
    }
    trials = study.get_trials()
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs[rec.FAIL_KIND] == "lost"
    assert "found RUNNING by `sweeper doctor`" in trials[1].user_attrs[rec.FAIL_REASON]
    (retry,) = [t for t in trials if t.state == TrialState.WAITING]
    assert retry.params == trials[1].params  # re-queued, and its checkpoint kept for it
    assert sorted(p.name for p in Path("checkpoints/planted").iterdir()) == ["trial-0001.pt"]
    assert {p.name for p in own_tmp.iterdir()} == {
        f"sweeper-artifacts-{DEAD_PID}-{tracking._tag('another')}-abc",  # another study's: left alone
        f"sweeper-artifacts-{os.getpid()}-{tracking._tag('planted')}-live",
    }
    client = MlflowClient(tracker.uri)
    runs = client.search_runs([tracker.experiment_id])
    assert "RUNNING" not in {x.info.status for x in runs}
    study_run = client.get_run(tracker.study_run_id())
    assert study_run.info.status == "KILLED" and "closed by `sweeper doctor`" in study_run.data.tags["reason"]
    trial_runs = [x for x in runs if x.data.tags.get("sweeper.kind") == "trial"]
    numbers = sorted(x.data.tags["trial_number"] for x in trial_runs)
    assert numbers == ["0", "1", "2", "3", "4", "5", "6"]  # 99 trashed
    pruned = client.get_run(study.trials[6].user_attrs[rec.MLFLOW_RUN])
    assert (pruned.info.status, pruned.data.tags["state"]) == ("FINISHED", "PRUNED")


@pytest.mark.slow
def test_the_next_refit_closes_a_killed_refits_run() -> None:
    tracker = tracking.MlflowTracker(None, "refits")
    killed = tracker.start("refit-trial-0000", {}, {tracking.KIND: "refit", "state": "RUNNING"})
    MlflowClient(tracker.uri).set_tag(killed.run_id, tracking.PROCESS, f"{socket.gethostname()}:{DEAD_PID}")
    elsewhere = tracker.start("refit-trial-0001", {}, {tracking.KIND: "refit", "state": "RUNNING"})
    MlflowClient(tracker.uri).set_tag(elsewhere.run_id, tracking.PROCESS, f"other-host:{DEAD_PID}")
    live = tracker.start("refit-trial-0002", {}, {tracking.KIND: "refit", "state": "RUNNING"})  # this process
    assert [r.info.run_id for r in tracker.dead_runs()] == [killed.run_id]
    assert tracker.close_dead_runs() == 1  # what refit-best and --combine do before they start their run
    run = MlflowClient(tracker.uri).get_run(killed.run_id)
    assert run.info.status == "FAILED" and "ended without closing it (killed)" in run.data.tags["reason"]
    statuses = {MlflowClient(tracker.uri).get_run(r.run_id).info.status for r in (elsewhere, live)}
    assert statuses == {"RUNNING"}
