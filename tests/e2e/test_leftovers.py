"""No process of a sweep outlives it: trial processes, their DataLoader workers (forked, two per loader
here), the fork server and the resource tracker all end with the sweep, whether it finishes (with
pruned trials), or is stopped by Ctrl-C or SIGTERM mid-epoch. Every process of the sweep is found by a
marker in its environment, which every descendant inherits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from tests.helpers.builders import TINY, tiny_study_doc, write_tiny_study
from tests.helpers.processes import FAULT_MODELS, REPO, interruptible, wait_for

WORKERS = ["--set", "num_workers=2"]


def start(args: list[str], mark: str, faults: str = "") -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{FAULT_MODELS}{os.pathsep}{REPO}",
        "SWEEPER_LEFTOVER_MARK": mark,
        "SWEEPER_FAULT": faults,
        "SWEEPER_FAULT_DIR": str(Path.cwd()),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper", "run-study", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )


def marked(mark: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("SWEEPER_LEFTOVER_MARK") == mark:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def none_left(mark: str, within: float = 20.0) -> list[str]:
    """Processes still alive after ``within`` seconds (a loader worker notices its trial's end in ~5 s)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and marked(mark):
        time.sleep(0.5)
    return [" ".join(p.cmdline())[:120] for p in marked(mark)]


@pytest.mark.slow
def test_a_finished_sweep_with_pruned_trials_and_loader_workers_leaves_no_process(image_folder: Path) -> None:
    mark = uuid.uuid4().hex
    doc = tiny_study_doc(
        "left", image_folder, epochs=2, space={"lr_head": {"float": [1e-3, 1e-1], "log": True}}
    )
    doc["objective"] = {"metric": "val_loss", "direction": "minimize"}  # no ties: all but the best are pruned
    doc["pruner"] = {"name": "percentile", "percentile": 1.0, "n_startup_trials": 1, "n_warmup_steps": 0}
    Path("left.yaml").write_text(yaml.safe_dump(doc))
    proc = start(["left.yaml", "--trials", "3", *TINY, *WORKERS], mark)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert none_left(mark) == []
    trials = optuna.load_study(study_name="left", storage=f"sqlite:///{Path.cwd()}/sweeper.db").trials
    assert TrialState.PRUNED in {t.state for t in trials}, [(t.state, t.intermediate_values) for t in trials]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_sweep_stopped_mid_epoch_leaves_no_process(image_folder: Path, sig: int) -> None:
    mark = uuid.uuid4().hex
    study = write_tiny_study("left", image_folder, epochs=3)
    faulty = [*TINY, *WORKERS, "--set", "backbone=fault_resnet"]  # pauses at a training step
    proc = start([study, "--trials", "2", *faulty], mark, faults="mid-epoch:pause")
    wait_for(lambda: Path("mid-epoch").exists(), what="a training step")
    assert len(marked(mark)) >= 4  # sweep, fork server, trial, loader workers at least
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert none_left(mark) == []
