"""--out is checked before anything runs: a file where a folder goes, a folder where a file goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.cli.app import out_dir, out_file
from sweeper.errors import SweeperError


def test_out_dir_refuses_a_file_and_makes_a_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SweeperError, match=r"--out .*taken: is a file; name a folder"):
        out_dir(tmp_path / "taken")
    assert out_dir(tmp_path / "a" / "b").is_dir()


def test_out_file_refuses_a_folder_and_a_folder_it_cannot_make(tmp_path: Path) -> None:
    with pytest.raises(SweeperError, match=r"is a folder; name the file to write"):
        out_file(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SweeperError, match=r"its folder .*: is a file"):
        out_file(tmp_path / "file" / "out.csv")
    assert out_file(tmp_path / "new" / "p.csv").parent.is_dir()


@pytest.mark.slow
def test_each_commands_out_is_checked_before_it_reads_a_study_or_a_model(cli, tmp_path: Path) -> None:
    """One line naming --out, exit 2, before anything is read, trained or recorded (the study named here
    does not even exist)."""
    (tmp_path / "taken").write_text("x")
    cases = [
        (["refit-best", "nosuch", "--out", str(tmp_path / "taken")], "is a file; name a folder"),
        (["predict", "nosuch", str(tmp_path), "--out", str(tmp_path)], "is a folder; name the file"),
        (["export-best", "nosuch", "--out", str(tmp_path / "taken" / "x.yaml")], "its folder"),
    ]
    for args, words in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith("error: --out ") and words in line, line
    assert not Path("sweeper.db").exists() and not Path("mlruns").exists()
