"""The fault matrix: each fault injected at a named point, then the invariants checked after the re-run.

Every test drives the real CLI on real stores. A fault point pauses the process (``sweeper/faults.py``:
``SWEEPER_FAULT=point:pause`` writes a marker file and waits), the test sends its signal or stops its
server while the process stands still there, and nothing depends on timing. After the re-run, the study
must hold exactly N counted trials and :func:`sweeper.sweep.doctor.examine` must find nothing: no trial or run
RUNNING, one run per trial with matching states, no params counted twice, no stale checkpoint, no
temporary file, no staging folder.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.store import record as rec
from sweeper.store import stores, tracking
from sweeper.sweep import doctor
from sweeper.sweep import loop as sweep
from tests.helpers.builders import TINY, write_tiny_study
from tests.helpers.processes import FAULT_MODELS, REPO, interruptible, private_tmp, sqlite_stores, wait_for

FAULTY = [*TINY, "--set", "backbone=fault_resnet"]  # passes the mid-epoch point on every step


@pytest.fixture(autouse=True)
def own_tmp(monkeypatch: pytest.MonkeyPatch, isolated: Path) -> Iterator[Path]:
    """A private temp folder, so that staging folders checked are this test's own."""
    with private_tmp(monkeypatch) as tmp:
        yield tmp


@pytest.fixture(autouse=True)
def no_leftover_sweeps() -> Iterator[None]:
    """A failed test must not leave a paused sweep behind: its process groups are killed."""
    yield
    for s in Sweep.started:
        if s.proc.poll() is None:
            os.killpg(s.proc.pid, signal.SIGKILL)
            s.proc.wait()
    Sweep.started.clear()


class Sweep:
    """One ``run-study`` process in its own process group, with faults planted at named points."""

    started: list[Sweep] = []

    def __init__(self, args: list[str], faults: str = "", **env: str) -> None:
        Sweep.started.append(self)
        self.dir = Path(f"faults-{time.monotonic_ns()}")
        self.dir.mkdir()
        self.log = self.dir / "stderr"
        full = {
            **os.environ,
            "PYTHONPATH": f"{FAULT_MODELS}{os.pathsep}{REPO}",
            "SWEEPER_FAULT": faults,
            "SWEEPER_FAULT_DIR": str(self.dir.resolve()),
            **env,
        }
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sweeper", "run-study", *args],
                env=full,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # a group of its own: the test's Ctrl-C and SIGKILL hit it all
                preexec_fn=interruptible,
            )

    def at(self, point: str) -> int:
        """Wait until the process stands at ``point``; the pid of the process that stands there."""
        marker = self.dir / point
        wait_for(lambda: marker.exists() and marker.read_text(), what=f"fault point {point}")
        return int(marker.read_text())

    def go(self, point: str) -> None:
        (self.dir / f"{point}.go").touch()

    def group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def end(self, timeout: float = 300) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        return code, self.log.read_text()

    def stderr(self) -> str:
        return self.log.read_text()


def assert_exact(name: str, n: int, storage: str | None = None, tracking_uri: str | None = None) -> None:
    """The invariants: exactly ``n`` counted trials, and nothing for the doctor to find."""
    default_storage, default_tracking = sqlite_stores()
    study = optuna.load_study(study_name=name, storage=stores.storage(storage or default_storage))
    tracker = tracking.MlflowTracker(tracking_uri or default_tracking, name)
    found = doctor.examine(study, tracker, live=False)
    assert [f.line() for f in found] == []
    assert rec.counts(study.get_trials())["counted"] == n


def rerun(study: str, n: int, *extra: str, **env: str) -> str:
    code, err = Sweep([study, "--trials", str(n), *TINY, *extra], **env).end()
    assert code == 0, err
    assert "Traceback" not in err, err
    return err


def trials(name: str, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage or sqlite_stores()[0]).get_trials()


# ---- kills at every point of a trial's life ---------------------------------------------------------


LIFE = ["setup-before-run", "setup-after-run", "mid-epoch", "epoch", "checkpoint-write", "finish"]
"""The points of a trial's life a kill can hit, in order."""


@pytest.mark.slow
def test_sigkill_of_the_whole_group_at_any_point_is_reconciled_by_the_next_run(image_folder: Path) -> None:
    """The same command, started again after each kill: each run first reconciles what the last kill
    left (its trial lost, counted as such), then is killed itself at the next point; the last run
    completes, and nothing is left for the doctor. One process start per point instead of two."""
    study = write_tiny_study("kill", image_folder, epochs=2)
    for done, point in enumerate(LIFE):
        s = Sweep([study, "--trials", "1", *FAULTY], f"{point}:pause")
        s.at(point)
        assert len(_lost("kill")) == done, f"the kill at {LIFE[done - 1]} was not reconciled by the next run"
        s.group(signal.SIGKILL)
        assert s.end()[0] == -signal.SIGKILL
    err = rerun(study, 1, "--set", "backbone=fault_resnet")
    assert_exact("kill", 1)
    lost = _lost("kill")
    assert len(lost) == len(LIFE), err
    for t, point in zip(lost, LIFE, strict=True):
        reason = t.user_attrs[rec.FAIL_REASON]
        assert "worker lost" in reason and "killed" in reason, (point, reason)


def _lost(name: str) -> list[optuna.trial.FrozenTrial]:
    if not Path("sweeper.db").exists():
        return []
    return [t for t in trials(name) if t.user_attrs.get(rec.FAIL_KIND) == "lost"]


@pytest.mark.slow
def test_sigkill_of_the_worker_alone_takes_its_trial_process_with_it(image_folder: Path) -> None:
    study = write_tiny_study("worker", image_folder, epochs=2)
    s = Sweep([study, "--trials", "1", *FAULTY], "mid-epoch:pause")
    trial_pid = s.at("mid-epoch")
    os.kill(s.proc.pid, signal.SIGKILL)
    s.end()
    wait_for(lambda: not Path(f"/proc/{trial_pid}").exists() or _zombie(trial_pid), 15, "the trial to exit")
    s.go("mid-epoch")  # would it still be there, it would train on
    rerun(study, 1, "--set", "backbone=fault_resnet")
    assert_exact("worker", 1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_sigkill_of_the_trial_process_alone_is_retried_at_once(image_folder: Path) -> None:
    study = write_tiny_study("child", image_folder, epochs=2)
    s = Sweep([study, "--trials", "1", *FAULTY], "mid-epoch:pause")
    os.kill(s.at("mid-epoch"), signal.SIGKILL)
    code, err = s.end()
    assert code == 0 and "Traceback" not in err, err
    assert_exact("child", 1)
    first, retry = trials("child")
    assert first.user_attrs[rec.FAIL_REASON].startswith("worker lost: trial process was killed by SIGKILL")
    assert retry.state == TrialState.COMPLETE and retry.params == first.params


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_fork_server_starts_is_an_interruption(sig: int, image_folder: Path) -> None:
    """The fork server starts first thing: it checks the study (timm names, weights) in a child while
    the sweep opens its stores, then forks the trials. A signal then stops the run in one line, before
    any trial, and the same command starts it again."""
    study = write_tiny_study("early", image_folder, epochs=1)
    s = Sweep([study, "--trials", "1", *TINY], "forkserver:pause")
    s.at("forkserver")  # the fork server is importing torch; the study's check waits for it
    s.group(sig)  # a terminal's Ctrl-C, or a container stop, reaches every process of the group
    s.go("forkserver")  # the server ignores both and goes on; its child's answer finds no one
    code, err = s.end()
    assert code == 130 and "Traceback" not in err and err.strip().endswith("interrupted"), err
    assert not Path("sweeper.db").exists() or not trials("early")  # nothing ran, nothing recorded
    rerun(study, 1)
    assert_exact("early", 1)


@pytest.mark.slow
def test_sigterm_mid_epoch_requeues_and_the_rerun_resumes(image_folder: Path) -> None:
    study = write_tiny_study("term", image_folder, epochs=2)
    s = Sweep([study, "--trials", "1", *FAULTY], "mid-epoch:pause", SWEEPER_PROGRESS_S="0.2")
    s.at("mid-epoch")
    # The log (no terminal) goes on while the epoch stands still: the sweep's line and the trial's batches,
    # every SWEEPER_PROGRESS_S seconds, not one line per epoch
    inside = re.compile(r"^progress \d+:\d\d:\d\d \|   #0 epoch 1/2: batch 0/(\d+), \? img/s, eta \?$", re.M)
    wait_for(lambda: len(inside.findall(s.stderr())) >= 2, what="two progress lines inside the epoch")
    assert re.search(r"^progress \d+:\d\d:\d\d \| 0/1 trials done \| best val_acc - \|", s.stderr(), re.M)
    os.kill(s.proc.pid, signal.SIGTERM)  # docker stop: the main process only
    code, err = s.end()
    assert code == 130 and "re-queued" in err, err
    rerun(study, 1, "--set", "backbone=fault_resnet")
    assert_exact("term", 1)


@pytest.mark.slow
def test_a_second_ctrl_c_during_the_clean_up_leaves_nothing_running(image_folder: Path) -> None:
    study = write_tiny_study("twice", image_folder, epochs=2)
    s = Sweep([study, "--trials", "1", *FAULTY], "mid-epoch:pause,finish:pause")
    s.at("mid-epoch")
    s.group(signal.SIGINT)
    s.at("finish")  # the worker closes its interrupted trial...
    s.group(signal.SIGINT)  # ...when the second Ctrl-C comes
    wait_for(lambda: "still closing the running trials" in s.stderr(), what="the second Ctrl-C's answer")
    s.go("finish")
    code, err = s.end()
    assert code == 130, err
    assert_exact("twice", 0)  # before any re-run: nothing RUNNING, the run closed, the params queued
    rerun(study, 1, "--set", "backbone=fault_resnet")
    assert_exact("twice", 1)


# ---- a full disk, damaged checkpoints ---------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_stops_the_sweep_in_one_line_and_leaves_no_temporary_file(image_folder: Path) -> None:
    study = write_tiny_study("full", image_folder, epochs=1)
    s = Sweep([study, "--trials", "2", *TINY], "checkpoint-write:enospc")
    code, err = s.end()
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the device:") and "SWEEPER_CHECKPOINTS" in last, err
    assert "Traceback" not in err
    assert not [p for p in Path("checkpoints").rglob("*") if p.is_file()]
    (first, retry) = trials("full")
    assert first.user_attrs[rec.NOT_COUNTED] == "halted" and retry.state == TrialState.WAITING
    rerun(study, 2)
    assert_exact("full", 2)


# ---- store outages ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_stopped_for_10_s_pauses_the_sweep_and_keeps_the_heartbeat(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.servers import cluster, create_database

    beat = {"SWEEPER_HEARTBEAT": "1", "SWEEPER_GRACE": "5"}
    for k, v in beat.items():
        monkeypatch.setenv(k, v)
    with cluster() as pg:
        storage = stores.with_driver(create_database(pg.url, "outage"))
        study = write_tiny_study("pg", image_folder, epochs=2)
        s = Sweep([study, "--trials", "1", *TINY, "--storage", storage], "epoch:pause,finish:pause", **beat)
        s.at("epoch")
        pg.stop()
        s.go("epoch")  # the worker now reports the epoch to a stopped database
        wait_for(lambda: "unreachable" in s.stderr(), 60, "the outage's message")
        time.sleep(10)  # the outage itself, twice the grace period
        pg.start()
        s.at("finish")
        time.sleep(6)  # over a grace period after the restart: a dead heartbeat would show now
        st = optuna.load_study(study_name="pg", storage=stores.storage(storage))
        assert st._storage._get_stale_trial_ids(st._study_id) == []  # type: ignore[attr-defined]
        s.go("finish")
        code, err = s.end()
        assert code == 0 and "Traceback" not in err, err
        assert "is back" in err
        assert_exact("pg", 1, storage)


@pytest.mark.slow
def test_an_mlflow_outage_pauses_the_sweep_and_one_beyond_the_patience_stops_it(
    image_folder: Path, mlflow_url: str
) -> None:
    """The session's MLflow server, reached through a relay the test cuts: to the sweep, the server is
    down (connections reset, then refused) and comes back on the same address."""
    from urllib.parse import urlsplit

    from tests.helpers.servers import Relay

    relay = Relay(urlsplit(mlflow_url).port or 80)
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    study = write_tiny_study("ml-outage", image_folder, epochs=1)
    url = relay.url
    args = [study, *TINY, "--tracking-uri", url]
    s = Sweep([*args, "--trials", "1"], "epoch:pause", **quick)
    s.at("epoch")
    relay.cut()
    s.go("epoch")  # the server went away mid-trial...
    wait_for(lambda: "unreachable" in s.stderr(), 60, "the outage's message")
    relay.restore()  # ...and comes back
    code, err = s.end()
    assert code == 0 and "is back" in err and "Traceback" not in err, err
    assert_exact("ml-outage", 1, tracking_uri=url)

    s = Sweep([*args, "--trials", "2"], "epoch:pause", SWEEPER_STORE_PATIENCE="1", **quick)
    s.at("epoch")
    relay.cut()
    s.go("epoch")  # the server stays away beyond the patience (1 s: each call that closes the halted
    code, err = s.end()  # trial and the study's run waits that long again before it gives up)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"error: MLflow tracking store {url} unreachable for 1s")
    assert rec.counts(trials("ml-outage"))["counted"] == 1  # the halted trial does not count
    relay.restore()
    rerun(study, 2, "--tracking-uri", url)
    assert_exact("ml-outage", 2, tracking_uri=url)
    relay.cut()


# ---- sampler seeds ----------------------------------------------------------------------------------


def quick(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_three_workers_extended_twice_never_repeat_params(
    sampler: str, tmp_path: Path, image_folder: Path
) -> None:
    from tests.helpers.builders import tiny_study

    spec = tiny_study(tmp_path, image_folder, f"seeds-{sampler}")
    spec = dataclasses.replace(spec, sampler={"name": sampler, "seed": 0})
    for n in (3, 7, 11):
        st = sweep.run(spec, n, [quick, quick, quick])
    done = [t for t in st.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 11
    assert len({t.params["x"] for t in done}) == 11
    assert doctor._duplicates(st.get_trials()) == []


# ---- retries ----------------------------------------------------------------------------------------


def test_a_third_interruption_says_its_params_were_not_requeued(
    tmp_path: Path, image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from sweeper.sweep import trial as trial_lib
    from tests.helpers.builders import tiny_study

    monkeypatch.setenv("SWEEPER_CHECKPOINTS", str(tmp_path / "ckpt"))
    spec = tiny_study(tmp_path, image_folder, "thrice")
    study = optuna.create_study(study_name="thrice", storage=stores.storage(None))
    study.add_trial(  # the second retry of trial 0, both earlier attempts interrupted
        create_trial(
            state=TrialState.WAITING,
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            system_attrs={"failed_trial": 0, "retry_history": [0, 1]},
        )
    )
    trial = study.ask()
    ckpt = trial_lib.checkpoint_path(spec, study.trials[trial.number])
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"epochs")
    ctx = trial_lib.Context(spec, trial, tracking.NO_RUN, ckpt, tmp_path, tracking.NullTracker())
    with pytest.raises(KeyboardInterrupt):
        trial_lib.finish(ctx, trial_lib.Outcome("interrupted", reason="interrupted", kind="interrupted"))
    reason = study.trials[trial.number].user_attrs[rec.FAIL_REASON]
    assert reason == "interrupted; not re-queued: retry limit reached (2 retries of trial 0)"
    assert [t.state for t in study.trials] == [TrialState.RUNNING]  # no fourth attempt queued
    assert not ckpt.exists()  # and no checkpoint kept for one


def test_set_reads_exponents_without_a_dot_as_numbers() -> None:
    from sweeper.cli import parse_sets

    assert parse_sets(["lr_head=3e-3", "backbone=resnet18", "epochs=2"]) == {
        "lr_head": 0.003,
        "backbone": "resnet18",
        "epochs": 2,
    }
