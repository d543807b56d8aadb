"""Bad input is the user's to fix: run-study stops on it in one line naming the file, before the study
or any trial exists (a truncated image is found by the scan's full decode): nothing recorded, nothing
trained."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.builders import TINY, write_tiny_study


def truncated(root: Path) -> tuple[str, str]:
    bad = sorted((root / "train" / "insect").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header reads; the pixels do not
    return "error: unreadable image", bad.name


def in_two_splits(root: Path) -> tuple[str, str]:
    src = sorted((root / "val" / "bird").iterdir())[0]
    shutil.copy(src, root / "train" / "bird" / f"copy{src.suffix}")
    return "error: the same image is in train", f"copy{src.suffix}"


def one_class(root: Path) -> tuple[str, str]:
    for split in ("train", "val"):
        for folder in ("bird", "insect"):
            shutil.rmtree(root / split / folder)
    return "error: ", "has 1 class folder (plant)"


def latin1_study(root: Path) -> tuple[str, str]:
    study = Path("baddata.yaml")
    study.write_bytes(study.read_bytes() + "description: caf\xe9\n".encode("latin-1"))
    return "error: ", "baddata.yaml: line"


@pytest.mark.slow
@pytest.mark.parametrize("spoil", [truncated, in_two_splits, one_class, latin1_study])
def test_bad_input_stops_run_study_in_one_line_before_anything_is_recorded(
    cli, image_folder: Path, spoil
) -> None:
    study = write_tiny_study("baddata", image_folder)
    starts, names = spoil(image_folder)
    r = cli("run-study", study, "--trials", "3", *TINY)
    assert r.returncode == 2, r.stdout + r.stderr
    (last,) = r.stderr.strip().splitlines()  # one line
    assert last.startswith(starts) and names in last, last
    assert "Traceback" not in r.stderr and "bug in the study" not in r.stderr
    assert not Path("sweeper.db").exists(), "refused before the study or any trial"
    assert not Path("mlruns").exists() and not Path("checkpoints").exists()  # not even empty folders
