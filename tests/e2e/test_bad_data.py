"""A bad image is the data's problem: the sweep stops on it in one line naming the file, after no more
than the one trial whose cache build found it, with nothing counted and nothing trained."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.store import record as rec
from tests.helpers.builders import TINY, write_tiny_study


@pytest.mark.slow
def test_a_truncated_train_image_stops_the_sweep_in_one_line(cli, image_folder: Path) -> None:
    bad = sorted((image_folder / "train" / "insect").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header reads; the pixels do not
    study = write_tiny_study("baddata", image_folder)
    r = cli("run-study", study, "--trials", "3", *TINY)
    assert r.returncode == 2, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unreadable image") and bad.name in last, r.stderr
    assert "Traceback" not in r.stderr and "bug in the study" not in r.stderr
    try:  # found while scanning (before the study exists), or by the first trial's cache build
        trials = optuna.load_study(
            study_name="baddata", storage=f"sqlite:///{Path.cwd()}/sweeper.db"
        ).get_trials()
    except KeyError:
        trials = []
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) <= 1 and all(t.user_attrs[rec.NOT_COUNTED] == "halted" for t in failed)
    assert not trials or rec.counts(trials)["counted"] == 0
