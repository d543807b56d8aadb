"""Study files are read as UTF-8; anything else is one line naming the file, line and byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.errors import SweeperError
from sweeper.study import spec as spec_lib


def test_a_study_file_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\nepochs: 1\n".encode("latin-1"))
    with pytest.raises(SweeperError, match=r"latin.yaml: line 1: not UTF-8 text \(byte 0xe9\)"):
        spec_lib.load(str(path))
