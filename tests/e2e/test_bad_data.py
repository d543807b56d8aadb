"""A bad image is the data's problem: the sweep stops on it in one line naming the file, found by the
scan's full decode before the study or any trial exists: nothing recorded, nothing trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.builders import TINY, write_tiny_study


@pytest.mark.slow
def test_a_truncated_train_image_stops_the_sweep_in_one_line(cli, image_folder: Path) -> None:
    bad = sorted((image_folder / "train" / "insect").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header reads; the pixels do not
    study = write_tiny_study("baddata", image_folder)
    r = cli("run-study", study, "--trials", "3", *TINY)
    assert r.returncode == 2, r.stdout + r.stderr
    (last,) = r.stderr.strip().splitlines()  # one line
    assert last.startswith("error: unreadable image") and bad.name in last, r.stderr
    assert "Traceback" not in r.stderr and "bug in the study" not in r.stderr
    assert not Path("sweeper.db").exists(), "found by the scan's decode, before the study or any trial"
    assert not any(Path("mlruns").rglob("*")) and not any(Path("checkpoints").rglob("*"))
