"""`sweeper check STUDY --data ROOT` runs every data check a sweep would, trains nothing, records nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.builders import write_tiny_study


@pytest.mark.slow
def test_check_with_data_names_a_truncated_image_and_records_nothing(cli, image_folder: Path) -> None:
    study = write_tiny_study("chk", image_folder)
    ok = cli("check", study, "--data", str(image_folder), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["data"] == {"classes": 3, "train": 30, "val": 15, "test": 6}
    bad = sorted((image_folder / "train" / "bird").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated: only a full decode sees it
    r = cli("check", study, "--data", str(image_folder))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and bad.name in r.stderr, r.stderr
    assert not Path("sweeper.db").exists() and not Path("mlruns").exists()  # nothing recorded
