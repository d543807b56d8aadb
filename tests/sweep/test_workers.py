"""sweeper.workers: GPU slots, the single writer of local SQLite files, and trials in fresh processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from sweeper.data import images as data_lib
from sweeper.errors import SweeperError
from sweeper.store import stores
from sweeper.sweep import workers
from tests.helpers.builders import trial_config

# ---- slots and GPUs ---------------------------------------------------------------------------


def test_slots_default_to_one_cpu_worker() -> None:
    assert workers.slots(None, None) == [None]
    assert workers.slots(3, None) == [None, None, None]


def test_slots_one_worker_per_listed_gpu() -> None:
    assert workers.slots(None, "0,2", available=4) == ["0", "2"]
    assert workers.slots(4, "0,1", available=2) == ["0", "1", "0", "1"]  # extra workers share round-robin


def test_slots_map_through_the_parents_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert workers.slots(None, "0,2", available=3) == ["4", "6"]


@pytest.mark.parametrize(
    ("gpus", "available", "message"),
    [
        ("0,x", 2, "comma-separated GPU indexes"),
        ("0,0", 2, "listed twice"),
        ("0,1", 0, "sees no CUDA GPU"),
        ("0,3", 2, "no GPU 3 here"),
    ],
)
def test_bad_gpu_lists_are_refused(gpus: str, available: int, message: str) -> None:
    with pytest.raises(SweeperError, match=message):
        workers.slots(None, gpus, available)


def test_fewer_workers_than_gpus_is_refused() -> None:
    with pytest.raises(SweeperError, match="--workers 1 is fewer than the 2 GPUs"):
        workers.slots(1, "0,1", available=2)


def test_halving_the_micro_batch_keeps_the_batch() -> None:
    half = workers.halve_micro_batch(trial_config(batch_size=64))
    assert half is not None and (half.batch_size, half.micro_batch) == (64, 32)
    assert workers.halve_micro_batch(trial_config(batch_size=64, micro_batch=1)) is None


# ---- one writer per SQLite file ---------------------------------------------------------------


def test_sqlite_path() -> None:
    assert stores.sqlite_path("sqlite:///sweeper.db") == Path("sweeper.db").resolve()
    assert stores.sqlite_path("sqlite:////tmp/x/y.db") == Path("/tmp/x/y.db")
    assert stores.sqlite_path("sqlite://") is None
    assert stores.sqlite_path("postgresql://u@h/db") is None


def test_a_second_writer_of_the_same_sqlite_file_is_refused(tmp_path: Path) -> None:
    import fcntl

    url = f"sqlite:///{tmp_path / 'sweeper.db'}"
    refused = (
        r"sweeper\.db is being written by another sweep \(run-study pid 4242 on elsewhere\); SQLite allows"
    )
    with open(tmp_path / "sweeper.db.lock", "a+") as other:  # another process's lock, as flock sees it
        other.write("run-study pid 4242 on elsewhere\n")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SweeperError, match=refused), stores.single_writer([url]):
            pass
    with stores.single_writer([url, "http://127.0.0.1:5000"]), stores.single_writer([url]):
        pass  # re-entrant within one process: a command holds it, and the sweep it runs takes it again
    with stores.single_writer([url, url]):  # released with the first; the same file listed twice is one
        pass


# ---- trials in fresh processes ----------------------------------------------------------------


def run_job(tmp_path: Path, image_folder: Path, report=None, restored=None, **cfg: object) -> workers.Trained:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    job = workers.Job(trial_config(**cfg), data_lib.scan(image_folder), "val_acc", out, tmp_path / "ckpt.pt")
    listener = workers.Listener(report or (lambda e, m: None), **({"restored": restored} if restored else {}))
    return workers.train_in_process(job, listener)


@pytest.mark.slow
def test_a_lost_trial_process_is_reported_and_its_retry_resumes_from_the_checkpoint(
    tmp_path: Path, image_folder: Path
) -> None:
    seen: list[tuple[int, dict[str, float]]] = []

    def kill_after_epoch_2(epoch: int, metrics: dict[str, float]) -> None:
        seen.append((epoch, metrics))
        if epoch == 2:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)

    with pytest.raises(workers.WorkerLost, match="killed by SIGKILL"):
        run_job(tmp_path, image_folder, kill_after_epoch_2, epochs=3)
    assert [e for e, _ in seen] == [1, 2]
    assert (tmp_path / "ckpt.pt").exists()

    reported: list[tuple[int, dict[str, float]]] = []
    restored: list[tuple[int, list[dict[str, float]]]] = []
    outcome = run_job(
        tmp_path,
        image_folder,
        lambda e, m: reported.append((e, m)),
        lambda e, h: restored.append((e, h)),
        epochs=3,
    )
    assert outcome.resumed_from == 2 and outcome.epochs == 3
    assert [e for e, _ in reported] == [3]  # restored epochs are not reported again...
    assert restored == [(2, seen)]  # ...but handed over once, with their steps, as they were
    assert (tmp_path / "out" / "best.safetensors").exists() and (tmp_path / "out" / "config.yaml").exists()


@pytest.mark.slow
def test_a_prune_stops_the_trial_process(tmp_path: Path, image_folder: Path) -> None:
    class Pruned(Exception):
        pass

    def prune(epoch: int, metrics: dict[str, float]) -> None:
        raise Pruned

    with pytest.raises(Pruned):
        run_job(tmp_path, image_folder, prune, epochs=5)
    assert not multiprocessing.active_children()


@pytest.mark.slow
def test_loader_workers_are_the_trials_children_and_die_with_it(tmp_path: Path, image_folder: Path) -> None:
    import psutil

    seen: dict[str, object] = {}

    def look_then_kill(epoch: int, metrics: dict[str, float]) -> None:
        (trial,) = [p for p in multiprocessing.active_children() if p.name == "sweeper-trial"]
        kids = psutil.Process(trial.pid).children()
        seen["workers"] = [k.pid for k in kids]
        seen["parents"] = {k.ppid() for k in kids}
        seen["trial"] = trial.pid
        os.kill(trial.pid, signal.SIGKILL)

    with pytest.raises(workers.WorkerLost):
        run_job(tmp_path, image_folder, look_then_kill, epochs=3, num_workers=2)
    assert len(seen["workers"]) >= 2, seen  # the train loader's two workers (at least)
    assert seen["parents"] == {seen["trial"]}, seen  # forked by the trial, not by a fork server of its own
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in seen["workers"]):
        time.sleep(0.5)
    alive = [p for p in seen["workers"] if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == [], "loader workers outlived their trial"
