"""The decoded-image cache: the pixels of plain decoding, rebuilt on change, safe to build concurrently."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from sweeper.data import augment, build, cache, tensors
from sweeper.data import images as data
from tests.helpers.builders import data_config
from tests.helpers.processes import REPO


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only its own caches."""
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path / "sweeper-data"))


def _files(root: Path) -> tuple[Path, ...]:
    return data.scan(root).files


def _with_odd_shapes(root: Path) -> Path:
    """Add non-square images larger and smaller than the cache size, so resizing goes both ways."""
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate([(61, 47), (30, 90), (200, 150)]):
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "train" / "bird" / f"odd_{i}.jpg", quality=90)
    return root


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_tensors_identical_to_plain_decoding(image_folder: Path, interpolation: str) -> None:
    files = _files(_with_odd_shapes(image_folder))
    tf = augment.eval_transform(data_config(interpolation=interpolation))
    c = cache.open_cache(files, tf.transforms[0])
    assert c is not None and len(c) == len(files)
    for f in files:
        assert torch.equal(tf(c[f]), tf(tensors.load_image(f))), f


def test_cache_holds_the_resized_image_with_its_aspect(image_folder: Path) -> None:
    files = _files(_with_odd_shapes(image_folder))
    resize = augment.eval_transform(data_config()).transforms[0]
    c = cache.open_cache(files, resize)
    assert c is not None
    for f in files:
        img = c[f]
        assert img.dtype == torch.uint8 and min(img.shape[1:]) == 32 * 8 // 7  # floor(32 / 0.875), as timm
        assert torch.equal(img, resize(tensors.load_image(f)))


def test_datasets_read_the_cache_and_decode_what_it_lacks(image_folder: Path) -> None:
    ds = data.scan(image_folder)
    tf = augment.eval_transform(data_config())
    c = cache.open_cache(ds.train.files, tf.transforms[0])
    both = tensors.ImageDataset(ds.train.files + ds.val.files, None, tf, c)
    plain = tensors.ImageDataset(ds.train.files + ds.val.files, None, tf)
    for i in range(len(both)):
        assert torch.equal(both[i][0], plain[i][0])


def test_a_changed_file_rebuilds_the_cache_and_drops_the_old_one(image_folder: Path) -> None:
    files = _files(image_folder)
    resize = augment.eval_transform(data_config()).transforms[0]
    first = cache.open_cache(files, resize)
    assert first is not None and cache.open_cache(files, resize).folder == first.folder  # reused
    changed = files[3]
    before = first[changed]  # a trial still running maps the old cache
    arr = np.full((40, 30, 3), 200, dtype=np.uint8)
    Image.fromarray(arr).save(changed, format=Image.open(changed).format)
    second = cache.open_cache(files, resize)
    assert second is not None and second.folder != first.folder
    assert torch.equal(second[changed], resize(tensors.load_image(changed)))
    assert not torch.equal(second[changed], before)
    assert not first.folder.exists()  # stale cache of the same dataset and size removed
    assert torch.equal(first[changed], before)  # ...while its open map stays readable


def test_another_size_is_another_cache(image_folder: Path) -> None:
    files = _files(image_folder)
    a = cache.open_cache(files, augment.eval_transform(data_config(32)).transforms[0])
    b = cache.open_cache(files, augment.eval_transform(data_config(48)).transforms[0])
    assert a is not None and b is not None and a.folder != b.folder and a.folder.exists()
    assert min(b[files[0]].shape[1:]) == 48 * 8 // 7  # floor, as timm


def test_over_budget_falls_back_with_a_message(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = _files(image_folder)
    monkeypatch.setenv("SWEEPER_CACHE_GB", "0.000001")  # 1 kB
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        assert cache.open_cache(files, augment.eval_transform(data_config()).transforms[0]) is None
    assert "over the budget" in caplog.text and "decoding every image" in caplog.text
    assert not any(p.is_dir() for p in (data.data_dir() / "cache").iterdir())


def test_budget_zero_turns_the_cache_off_quietly(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SWEEPER_CACHE_GB", "0")
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        assert (
            cache.open_cache(_files(image_folder), augment.eval_transform(data_config(40)).transforms[0])
            is None
        )
    assert caplog.text == ""


def test_cache_pickles_without_its_map(image_folder: Path) -> None:
    """Spawned DataLoader workers get the index and map the file themselves."""
    files = _files(image_folder)
    c = cache.open_cache(files, T.Resize(20))
    assert c is not None
    c[files[0]]  # opens the map
    clone = pickle.loads(pickle.dumps(c))
    assert len(pickle.dumps(c)) < 10_000 + 100 * len(files)
    assert all(torch.equal(clone[f], c[f]) for f in files)


def test_a_killed_build_leaves_nothing_half_written(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = list(_files(image_folder))
    resize = T.Resize(21)

    def broken(path: Path) -> torch.Tensor:
        if path == files[5]:
            raise KeyboardInterrupt
        return tensors.load_image(path)

    monkeypatch.setattr(build, "load_image", broken)
    with pytest.raises(KeyboardInterrupt):
        cache.open_cache(files, resize)
    assert [p for p in (data.data_dir() / "cache").iterdir() if p.is_dir()] == []
    monkeypatch.undo()
    c = cache.open_cache(files, resize)
    assert c is not None and torch.equal(c[files[5]], resize(tensors.load_image(files[5])))


_BUILD = """
import logging, os, sys, time
from pathlib import Path
from torchvision.transforms import v2 as T
from sweeper.data import cache
logging.basicConfig(level=logging.INFO, format="%(message)s")
files = [Path(p) for p in Path(sys.argv[1]).read_text().split()]
while time.time() < float(sys.argv[2]):  # both processes start building at the same moment
    time.sleep(0.001)
c = cache.open_cache(files, T.Resize(64), workers=int(sys.argv[3]))
print(c.folder, sum(int(c[f].sum()) for f in files))
"""


@pytest.mark.slow
def test_two_processes_building_at_once_get_one_correct_cache(image_folder: Path, tmp_path: Path) -> None:
    files = _files(_with_odd_shapes(image_folder))
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(f) for f in files))
    start = str(time.time() + 3.0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD, str(listing), start, str(w)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (0, 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = {o.strip() for o, _ in outs}
    assert len(results) == 1  # the same folder, the same pixels
    assert sum(e.count("cached ") for _, e in outs) == 1  # one built it, the other waited and mapped it
    root = data.data_dir() / "cache"
    assert [p.name for p in root.iterdir() if p.is_dir()] == [Path(results.pop().split()[0]).name]
    expected = sum(int(T.Resize(64)(tensors.load_image(f)).sum()) for f in files)
    assert outs[0][0].split()[1] == str(expected)


def test_cache_gb_0_turns_off_a_cache_that_exists(
    image_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(image_folder)
    resize = augment.eval_transform(data_config(32)).transforms[0]
    assert cache.open_cache(files, resize) is not None  # built
    monkeypatch.setenv("SWEEPER_CACHE_GB", "0")
    assert cache.open_cache(files, resize) is None  # off, although it exists


@pytest.fixture
def read_only_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A data dir on its own tmpfs, to remount read-only (root ignores permission bits; a mount does not)."""
    where = tmp_path / "ro-data"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(where))
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow  # mounts a filesystem
def test_a_read_only_data_dir_serves_its_built_cache_and_decodes_the_rest(
    image_folder: Path, read_only_data_dir, caplog: pytest.LogCaptureFixture
) -> None:
    files = _files(image_folder)
    resize = augment.eval_transform(data_config(32)).transforms[0]
    built = cache.open_cache(files, resize)
    assert built is not None
    read_only_data_dir()
    again = cache.open_cache(files, resize)  # the shared, pre-built cache, mounted read-only
    assert (
        again is not None and again.folder == built.folder and torch.equal(again[files[0]], built[files[0]])
    )
    with caplog.at_level(logging.WARNING, logger="sweeper"):
        other = cache.open_cache(files, augment.eval_transform(data_config(48)).transforms[0])
    assert other is None and "cannot build the decoded-image cache" in caplog.text
    data.check_decodes(files)  # decodes, and cannot remember it: no error


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("size", [32, 40])
def test_a_run_evaluates_exactly_the_pixels_predict_computes_from_the_files(
    image_folder: Path, crop_mode: str, size: int
) -> None:
    """Val/test pixels through a run's pipelines (cached) equal the eval transform of the decoded file,
    although the training cache keeps a larger copy (cache_scale 3 > the eval resize)."""
    from sweeper.data import loaders
    from sweeper.study.config import EvalConfig
    from tests.helpers.builders import fit_config

    ds = data.scan(_with_odd_shapes(image_folder))
    cfg = fit_config(img_size=size, cache_scale=3.0, eval=EvalConfig(crop_mode=crop_mode))
    dcfg = data_config(size, interpolation="bicubic")
    pipes = loaders.Pipelines(cfg, dcfg, torch.device("cpu"), ds.train, ds.val)
    assert pipes.eval_images is not None and pipes.images is not None  # both cached, in one build
    big = next(f for f in ds.train.files if f.name == "odd_2.jpg")  # 200 x 150
    assert min(pipes.images[big].shape[1:]) == 3 * size  # the training copy is larger than the eval's
    deployed = augment.eval_transform(dcfg, cfg.eval)
    for split in (ds.val, ds.train):  # a refit or another fold evaluates the training files
        got = pipes.eval(split)
        for i, f in enumerate(split.files):
            assert torch.equal(got[i][0], deployed(tensors.load_image(f))), f


def test_the_training_cache_keeps_the_short_side_the_median_crop_needs() -> None:
    assert cache.train_short_side(224, (0.08, 1.0), (3 / 4, 4 / 3)) == 305  # torchvision's defaults
    assert cache.train_short_side(224, None, (3 / 4, 4 / 3)) == 224  # no random crop: resized whole
    assert cache.train_short_side(224, (1.0, 1.0), (1.0, 1.0)) == 224
    short = cache.train_short_side(32, (0.25, 0.75), (0.5, 0.5))  # the median crop's short side is 32
    assert short * (0.5 * 0.5) ** 0.5 >= 32 > (short - 1) * (0.5 * 0.5) ** 0.5


def test_the_build_says_its_size_first_reports_progress_and_caches_each_split_as_it_is_read(
    image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = data.scan(_with_odd_shapes(image_folder))
    crop, shrink = augment.EvalCrop(data_config(32)), cache.ShrinkShortSide(40, augment._interp("bilinear"))
    seen: list[tuple[int, int]] = []
    evals, trains = cache.open_caches(
        [(ds.val.files, crop), (ds.train.files, shrink)], workers=0, progress=lambda d, n: seen.append((d, n))
    )
    total = len(set(ds.val.files) | set(ds.train.files))
    assert seen == [(i, total) for i in range(1, total + 1)]  # one decode per file, both caches at once
    assert (
        evals is not None
        and trains is not None
        and len(evals) == len(ds.val)
        and len(trains) == len(ds.train)
    )
    said = capsys.readouterr().err
    need = sum(3 * int(np.prod(shrink(tensors.load_image(f)).shape[1:])) for f in ds.train.files)
    assert f"{len(ds.train):,} images at short side 40 (for training crops): {need / 1e6:.1f} MB" in said
    assert f"{len(ds.val):,} images as 32x32 eval crops" in said
    assert (trains.folder / "pixels.u8").stat().st_size == need  # the header's sizes, exactly
    for f in ds.train.files:
        assert torch.equal(trains[f], shrink(tensors.load_image(f))), f
    for f in ds.val.files:
        assert torch.equal(evals[f], crop(tensors.load_image(f))), f


def test_a_trial_keys_its_cache_on_the_scans_version_without_statting_the_files(image_folder: Path) -> None:
    ds = data.scan(image_folder)
    files, resize = ds.train.files, T.Resize(20)
    assert ds.train.version and ds.train.version == ds.val.version == (ds.train + ds.val).version
    keyed = cache.fingerprint(files, resize, ds.train.version)
    stat_keyed = cache.fingerprint(files, resize)
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 10**9))
    assert cache.fingerprint(files, resize, ds.train.version) == keyed  # the version holds; no stat
    assert cache.fingerprint(files, resize) != stat_keyed  # without it, every file is statted
    rescanned = data.scan(image_folder)  # the next sweep's scan sees the change: a new key
    assert rescanned.train.version != ds.train.version
    assert cache.fingerprint(files, resize, rescanned.train.version) != keyed
