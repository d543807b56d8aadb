"""A full MLflow artifact store: the sweep halts in one line, every run is closed and no trial ends FAIL
without its reason. The disk is really full: a tiny tmpfs mounted at the artifact root (root only;
skipped where mounting is not allowed)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.store import record as rec
from sweeper.store import stores, tracking
from sweeper.sweep import doctor
from tests.helpers.builders import TINY, write_tiny_study


@pytest.fixture
def full_artifact_root() -> Iterator[Path]:
    """``./mlruns/artifacts`` (where a local SQLite tracking store keeps artifacts) on a full tmpfs."""
    root = Path("mlruns/artifacts").resolve()
    root.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with open(root / "filler", "wb", buffering=0) as f, pytest.raises(OSError, match="No space"):
            while True:  # until the disk is full
                f.write(b"\0" * 4096)
        with open(root / "filler", "r+b") as f:  # room for the study's record, not for a trial's weights
            f.truncate(f.seek(0, 2) - 24 * 1024)
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.mark.slow
def test_a_full_artifact_store_halts_the_sweep_in_one_line_with_every_run_closed(
    full_artifact_root: Path, image_folder: Path, cli
) -> None:
    study = write_tiny_study("fullart", image_folder, epochs=1)
    out = cli("run-study", study, "--trials", "2", *TINY)
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the device while recording the trial's result"), last
    assert "artifact store" in last
    st = optuna.load_study(study_name="fullart", storage=stores.storage(f"sqlite:///{Path.cwd()}/sweeper.db"))
    failed = [t for t in st.get_trials() if t.state == TrialState.FAIL]
    assert len(st.get_trials()) <= 2, "the sweep stopped at the first full-disk trial, not after the budget"
    assert failed and all(t.user_attrs.get(rec.FAIL_REASON) for t in failed)
    assert all(t.user_attrs.get(rec.NOT_COUNTED) == "halted" for t in failed)
    tracker = tracking.MlflowTracker(f"sqlite:///{Path.cwd()}/mlruns/mlflow.db", "fullart")
    assert [r.info.status for r in tracker.trial_runs() if r.info.status == "RUNNING"] == []
    assert not [f for f in doctor.examine(st, tracker, live=False) if "RUNNING" in f.line()]
