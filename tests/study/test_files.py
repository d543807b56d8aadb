"""Study files are read as UTF-8; anything else is one line naming the file, line and byte. A study merged
over its bases is one file that loads as the same study without them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeper.errors import SweeperError
from sweeper.study import files
from sweeper.study import spec as spec_lib


def test_a_study_file_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\nepochs: 1\n".encode("latin-1"))
    with pytest.raises(SweeperError, match=r"latin.yaml: line 1: not UTF-8 text \(byte 0xe9\)"):
        spec_lib.load(str(path))


@pytest.mark.parametrize("path", sorted(files.SHIPPED.glob("[!_]*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_study_merged_loads_alone_as_the_same_study(path: Path, tmp_path: Path) -> None:
    alone = tmp_path / "elsewhere" / "study.yaml"  # another name, no base beside it
    alone.parent.mkdir()
    here = spec_lib.load(str(path))
    alone.write_text(files.merged_text(path, here.name))
    there = spec_lib.load(str(alone))
    assert there.name == here.name and not there.bases
    assert spec_lib.to_document(there) == spec_lib.to_document(here)


def test_merged_text_keeps_a_string_the_loader_would_read_as_a_number() -> None:
    text = yaml.dump({"a": "3e-3", "b": 3e-3, "c": "two\nlines"}, Dumper=files.StudyDumper)
    assert yaml.load(text, Loader=files.StudyLoader) == {"a": "3e-3", "b": 3e-3, "c": "two\nlines"}
