from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from sweeper.data import images as data
from sweeper.data import tensors
from sweeper.errors import SweeperError
from tests.helpers.builders import make_image_folder


def test_scan_sorts_classes_and_labels(image_folder: Path) -> None:
    d = data.scan(image_folder)
    assert d.classes == ("bird", "insect", "plant")
    assert len(d.train) == 30 and len(d.val) == 15 and len(d.test) == 6
    assert all(f.parent.name == d.classes[y] for f, y in zip(d.train.files, d.train.labels, strict=True))


def test_any_pil_image_becomes_rgb_uint8(image_folder: Path) -> None:
    d = data.scan(image_folder)
    suffixes = {f.suffix for f in d.train.files}
    assert suffixes == {".png", ".jpg"}
    for f in d.train.files[:4]:  # RGB png, jpg, grayscale png, RGBA png
        x = tensors.load_image(f)
        assert x.dtype == torch.uint8 and x.shape == (3, 24, 24)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SweeperError, match=r"data root .*nope does not exist"):
        data.scan(tmp_path / "nope")


def test_missing_val_split(image_folder: Path) -> None:
    shutil.rmtree(image_folder / "val")
    with pytest.raises(SweeperError, match=r"val is missing"):
        data.scan(image_folder)


def test_train_and_val_classes_differ(image_folder: Path) -> None:
    shutil.rmtree(image_folder / "val" / "plant")
    (image_folder / "val" / "fungus").mkdir()
    (image_folder / "val" / "fungus" / "x.png").write_bytes(
        (image_folder / "train/bird").iterdir().__next__().read_bytes()
    )
    with pytest.raises(SweeperError, match=r"only in train: \['plant'\]; only in val: \['fungus'\]"):
        data.scan(image_folder)


def test_empty_class_folder(image_folder: Path) -> None:
    for f in (image_folder / "train" / "insect").iterdir():
        f.unlink()
    with pytest.raises(SweeperError, match=r"class folder .*train/insect is empty"):
        data.scan(image_folder)


def test_unreadable_image_is_named(image_folder: Path) -> None:
    bad = image_folder / "train" / "bird" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(SweeperError, match=r"unreadable image .*broken\.jpg"):
        data.scan(image_folder)


def test_split_concatenation_keeps_labels(tmp_path: Path) -> None:
    d = data.scan(make_image_folder(tmp_path / "d", n_train=2, n_val=1, n_test=0))
    both = d.train + d.val
    assert len(both) == 9 and both.labels[-1] == 2 and d.test == ()


def test_builtin_digits_written_once_as_image_folder() -> None:
    root = data.materialize_builtin()
    d = data.scan(data.BUILTIN)
    assert d.root == root and d.classes == tuple(str(i) for i in range(10))
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    stamp = (root / "val").stat().st_mtime
    assert data.materialize_builtin() == root and (root / "val").stat().st_mtime == stamp
    assert (root / "test_labels.csv").read_text().count("\n") == len(d.test) + 1


def test_the_files_are_checked_once_per_version(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []
    check = data.check_header
    monkeypatch.setattr(data, "check_header", lambda f, m: (opened.append(f), check(f, m)))
    first = data.scan(image_folder)
    assert sorted(opened) == sorted([*first.train.files, *first.val.files, *first.test])
    opened.clear()
    assert data.scan(image_folder) == first and opened == []  # the same files: nothing read again
    changed = first.val.files[0]
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    data.scan(image_folder)
    assert changed in opened  # any change checks them all again
