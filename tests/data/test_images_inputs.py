"""A messy, real-world image folder through the real scan, decode and cache code."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from sweeper.data import cache, tensors
from sweeper.data import images as data
from sweeper.errors import SweeperError
from tests.helpers.builders import make_image_folder


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only its own caches and decode stamps."""
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path / "sweeper-data"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "d", n_train=2, n_val=1, n_test=2)


def _upright() -> np.ndarray:
    """40 tall x 20 wide: red top half, blue bottom half."""
    arr = np.zeros((40, 20, 3), dtype=np.uint8)
    arr[:20, :, 0] = 255
    arr[20:, :, 2] = 255
    return arr


def _save_rotated_jpeg(path: Path) -> None:
    """Pixels stored sideways with EXIF orientation 6 ("rotate 90 clockwise to show"), as phones write."""
    stored = Image.fromarray(_upright()).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)


def _truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _assert_upright(x: torch.Tensor) -> None:
    assert x.shape == (3, 40, 20)
    top, bottom = x[:, :18].float().mean((1, 2)), x[:, 22:].float().mean((1, 2))
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50


def test_exif_orientation_is_applied_when_decoding_and_caching(root: Path) -> None:
    f = root / "train" / "bird" / "phone.jpg"
    _save_rotated_jpeg(f)
    assert Image.open(f).size == (40, 20)  # stored sideways
    _assert_upright(tensors.load_image(f))
    d = data.scan(root)
    c = cache.open_cache(d.files, T.Resize(40))
    assert c is not None
    assert c[f].shape[1:] == (80, 40)  # short side 40: the upright aspect
    tf = T.Resize((40, 20))
    _assert_upright(tensors.ImageDataset((f,), None, tf, c)[0][0])  # through the cache (trials)
    _assert_upright(tensors.ImageDataset((f,), None, tf)[0][0])  # without it (test-time prediction)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_is_scaled_not_clipped(tmp_path: Path, mode: str) -> None:
    values = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    f = tmp_path / f"deep-{mode.replace(';', '')}.{'png' if mode == 'I;16' else 'tif'}"
    if mode == "F":
        Image.fromarray(values.astype(np.float32) / 65535.0, mode="F").save(f)  # float in [0, 1]
    else:
        Image.fromarray(values if mode == "I;16" else values.astype(np.int32)).save(f)
    x = tensors.load_image(f)
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16)
    expected = torch.from_numpy(np.rint(values / 257.0).astype(np.uint8))
    assert (x[0].int() - expected.int()).abs().max() <= 1  # 32768 -> 128, not clipped to 255
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert (x == 255).float().mean() < 0.01


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])  # 1: a process pool
def test_a_truncated_train_image_is_named_before_training(root: Path, workers: int) -> None:
    bad = _truncated_jpeg(root / "train" / "plant" / "cut.jpg")
    d = data.scan(root)  # the header is intact: the build is the full decode
    with pytest.raises(SweeperError) as e:
        cache.open_cache(d.files, T.Resize(16), workers=workers)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "truncated" in msg and "remove or replace" in msg
    assert not [p for p in (data.data_dir() / "cache").iterdir() if p.is_dir()]


def test_without_a_cache_every_image_is_still_decoded_first(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEPER_CACHE_GB", "0")
    bad = _truncated_jpeg(root / "val" / "bird" / "cut.jpg")
    files = data.scan(root).files
    with pytest.raises(SweeperError, match=rf"unreadable image {bad}: image file is truncated"):
        cache.open_cache(files, T.Resize(16))
    bad.unlink()
    files = data.scan(root).files
    assert cache.open_cache(files, T.Resize(16)) is None
    assert len(list((data.data_dir() / "decoded").iterdir())) >= 1  # remembered: not decoded again


def test_a_truncated_test_image_stops_the_scan(root: Path) -> None:
    bad = _truncated_jpeg(root / "test" / "cut.jpg")
    with pytest.raises(SweeperError, match=rf"unreadable image {bad}: .*truncated.*remove or replace"):
        data.scan(root)


def test_layout_rules(root: Path) -> None:
    nested = root / "train" / "bird" / "more" / "deep.png"
    nested.parent.mkdir()
    Image.new("RGB", (24, 24), "white").save(nested)
    (root / "test" / "batch2").mkdir()
    Image.new("RGB", (24, 24), "black").save(root / "test" / "batch2" / "late.png")  # not a copy of deep
    (root / "train" / "bird" / "notes.txt").write_text("collected 2024")
    (root / "train" / "insect" / "Thumbs.db").write_bytes(b"\0" * 10)
    (root / "test" / "desc.json").write_text("{}")
    (root / "val" / "plant" / ".DS_Store").write_bytes(b"\0")
    (root / "val" / "plant" / "._plant_000.png").write_bytes(b"\0")  # AppleDouble: hidden
    upper = root / "val" / "plant" / "SHOUT.JPG"
    Image.new("RGB", (24, 24), "white").save(upper, format="JPEG")
    d = data.scan(root)
    assert nested in d.train.files and d.train.labels[d.train.files.index(nested)] == 0
    assert upper in d.val.files
    assert root / "test" / "batch2" / "late.png" in d.test and len(d.test) == 3 and d.test_labels is None
    assert sorted(p.name for p in d.skipped) == ["Thumbs.db", "desc.json", "notes.txt"]


def test_a_labelled_test_folder_keeps_its_labels(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", n_train=2, n_val=1, n_test=0)
    for c, color in (("insect", "red"), ("bird", "blue")):
        (root / "test" / c).mkdir(parents=True)
        Image.new("RGB", (24, 24), color).save(root / "test" / c / f"{c}_t.png")
    d = data.scan(root)
    assert [p.name for p in d.test] == ["bird_t.png", "insect_t.png"] and d.test_labels == (0, 1)
    Image.new("RGB", (24, 24), "white").save(root / "test" / "loose.png")  # mixed: unlabelled, all kept
    d = data.scan(root)
    assert len(d.test) == 3 and d.test_labels is None


@pytest.mark.parametrize("other", ["test/a.png", "test/sub/a.jpg"])
def test_duplicate_submission_ids_name_both_files(root: Path, other: str) -> None:
    Image.new("RGB", (24, 24), "white").save(root / "test" / "a.jpg")
    (root / other).parent.mkdir(exist_ok=True)
    Image.new("RGB", (24, 24), "white").save(root / other)
    with pytest.raises(SweeperError, match=r"test images .*a\.(jpg|png) and .*a\.(jpg|png) have the same"):
        data.scan(root)


def test_class_names_compare_in_nfc(tmp_path: Path) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    root = make_image_folder(tmp_path / "d", classes=(nfc, "tea"), n_train=2, n_val=1, n_test=0)
    (root / "val" / nfc).rename(root / "val" / nfd)
    d = data.scan(root)
    assert d.classes == (nfc, "tea") and len(d.val) == 2 and d.val.labels == (0, 1)


def test_an_image_over_the_pixel_limit_names_the_file_and_the_option(root: Path) -> None:
    big = root / "train" / "bird" / "poster.png"
    Image.new("RGB", (60, 50), "white").save(big)
    data.scan(root, max_pixels=3000)
    with pytest.raises(SweeperError) as e:
        data.scan(root, max_pixels=2999)
    assert str(big) in str(e.value) and "3000 pixels" in str(e.value) and "max_pixels" in str(e.value)


def test_a_link_into_a_loop_is_not_followed(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("cat", "dog"), n_train=4, n_val=2)
    (root / "train" / "cat" / "loop").symlink_to("..")  # points at train/: would relabel dog as cat
    (root / "train" / "cat" / "self").symlink_to(".")
    d = data.scan(root)
    assert len(d.train) == 8 and d.train.labels.count(0) == 4


def test_the_same_image_in_train_and_val_is_refused_naming_both(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("cat", "dog"), n_train=4, n_val=2)
    src = sorted((root / "val" / "dog").iterdir())[0]
    copy = root / "train" / "dog" / f"copy{src.suffix}"
    copy.write_bytes(src.read_bytes())
    with pytest.raises(
        SweeperError, match=rf"same image is in train .*{copy.name}.* and val .*{src.name}.*leaks val"
    ):
        data.scan(root)
    d = data.scan(root, duplicates="warn")  # the study's data: {duplicates: warn} goes on
    assert copy in d.train.files


def test_files_alike_in_size_and_first_bytes_are_compared_whole(tmp_path: Path) -> None:
    """Duplicates are found by size, then the first 4 kB, then the whole content: a file that differs
    only at its end is not a copy, and one that differs nowhere is."""
    root = make_image_folder(tmp_path / "d", classes=("cat", "dog"), n_train=4, n_val=2)
    src = sorted((root / "val" / "dog").iterdir())[0]
    body = src.read_bytes() + bytes(5000)  # a JPEG with trailing bytes still decodes
    src.write_bytes(body)
    near = root / "train" / "dog" / f"near{src.suffix}"
    near.write_bytes(body[:-1] + b"\x01")  # same size, same first 4 kB, one byte apart at the end
    data.scan(root)  # not a copy
    near.write_bytes(body)
    with pytest.raises(SweeperError, match=rf"same image is in train .*{near.name}.* and val .*{src.name}"):
        data.scan(root)


def test_a_link_to_another_class_is_one_image_twice(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("cat", "dog"), n_train=4, n_val=2)
    (root / "train" / "cat" / "dogs").symlink_to(root / "train" / "dog")
    with pytest.raises(SweeperError, match=r"same image is in train .* and train .*: it counts twice"):
        data.scan(root)


def test_one_class_is_refused(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("cat",), n_train=4, n_val=2)
    with pytest.raises(SweeperError, match=r"has 1 class folder \(cat\); a classifier needs at least two"):
        data.scan(root)
