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
