"""``data: {val_from_train: F}``: a stratified, seeded hold-out of train added to val, and recorded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sweeper.data import images as data
from sweeper.errors import SweeperError
from sweeper.store import record
from sweeper.study import spec
from tests.helpers.builders import make_image_folder


def test_hold_out_is_stratified_seeded_and_recorded(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", n_train=10, n_val=5, n_test=0)
    ds = data.scan(str(root))
    held = data.hold_out(ds, 0.2)
    assert (len(held.train), len(held.val)) == (24, 21)  # 2 of each class's 10 train images moved
    moved = set(held.val.files) - set(ds.val.files)
    assert Counter(held.val.labels[held.val.files.index(f)] for f in moved) == {0: 2, 1: 2, 2: 2}
    assert set(held.train.files) | moved == set(ds.train.files) and not moved & set(held.train.files)
    assert data.hold_out(ds, 0.2) == held  # seeded: every run of a study sees the same split
    assert data.hold_out(ds, 0.0) is ds
    fp = record.fingerprint(held)
    assert fp["images"]["val"] == 21 and fp["digest"] != record.fingerprint(ds)["digest"]


def test_val_from_train_parses_round_trips_and_names_a_bad_value() -> None:
    raw = {"name": "h", "data": {"root": "builtin:digits", "val_from_train": 0.15}}
    s = spec.parse(raw, Path("h.yaml"))
    assert s.val_from_train == 0.15 and spec.parse(spec.to_document(s), Path("h.yaml")) == s
    with pytest.raises(SweeperError, match=r"h.yaml: data.val_from_train: must be a fraction in \[0, 1\)"):
        spec.parse({**raw, "data": {"root": "builtin:digits", "val_from_train": 1.5}}, Path("h.yaml"))
