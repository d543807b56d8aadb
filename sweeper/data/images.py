"""Image folders in the reference layout, checked up front, and the built-in digits dataset.

Layout rules, enforced by :func:`scan`:

- ``ROOT/train/<class>/`` and ``ROOT/val/<class>/`` with the same class folders. Classes are the sorted
  folder names after unicode NFC normalization (a folder named "café" in NFD on one disk and NFC on
  another is one class, named in NFC).
- Images in folders nested inside a class folder belong to that class (recursively, as torchvision's
  ``ImageFolder`` does). Hidden files and folders (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``)
  are ignored.
- Only files with an image extension (:data:`IMG_EXTENSIONS`, any case) are images; any other file
  (``notes.txt``, ``Thumbs.db``) is skipped and counted in :attr:`ImageFolderData.skipped`, never fatal.
- ``ROOT/test/`` is optional. Unlabelled: every image under it, at any depth, is predicted, and the
  file name without extension is its submission id, so two files with the same id (``a.jpg`` and
  ``a.png``, or ``a.jpg`` in two subfolders) are an error. Labelled: when ``test/`` holds only folders
  named after classes, its images carry those labels (:attr:`ImageFolderData.test_labels`) and are still
  all predicted.

Every image is decoded the same way (:func:`load_image`): EXIF orientation applied, 16-bit and float
images scaled to 8 bits, anything else converted to RGB. :func:`scan` reads every header (a file that is
not an image, or one over the ``data.max_pixels`` limit, is named before anything trains) and fully
decodes the test images, which nothing else decodes before a refit ends; train and val images are fully
decoded by the first trial's cache build (:mod:`sweeper.data.cache`) before it trains. These checks
(and the duplicate check) run once per version of the files: a stamp under the data dir keyed by every
file's path, size, mtime and inode remembers a set that passed, so a re-run lists and stats the files
but reads none. That version travels with the splits (:attr:`Split.version`) to the trials, which key
their caches on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError

from sweeper import meter
from sweeper.data.workers import cores
from sweeper.errors import SweeperError
from sweeper.servable.pixels import decode
from sweeper.study.config import DEFAULT_MAX_PIXELS

K = TypeVar("K")

BUILTIN = "builtin:digits"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's ``IMG_EXTENSIONS``, compared in lower case."""

# scan() checks every file's pixel count against the study's data.max_pixels and names the file; PIL's
# own process-wide limit would otherwise refuse, at decode time, a file the study allowed.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Split:
    """Labelled image files; ``labels[i]`` indexes the dataset's class list."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]
    # the version of the scanned dataset's files these come from (every path, size, mtime and inode, as
    # the scan found them); a decoded-image cache is keyed on it instead of statting every file again in
    # every trial. "" = unknown: the cache stats them.
    version: str = field(default="", compare=False)

    def __len__(self) -> int:
        return len(self.files)

    def __add__(self, other: Split) -> Split:
        version = self.version if self.version == other.version else ""
        return Split(self.files + other.files, self.labels + other.labels, version)


@dataclass(frozen=True)
class ImageFolderData:
    """A scanned and checked dataset: class names, the train/val splits and the test files."""

    root: Path
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: tuple[Path, ...]
    test_labels: tuple[int, ...] | None = None  # a labelled test/<class>/ layout; None = unlabelled
    skipped: tuple[Path, ...] = ()  # files without an image extension, or outside any class folder

    @property
    def files(self) -> tuple[Path, ...]:
        """Every image of the dataset in a fixed order: what a decoded-image cache holds."""
        return self.train.files + self.val.files + self.test


def is_image_name(name: str) -> bool:
    """An image file by name: an image extension (any case) and not hidden (AppleDouble ``._x.jpg``)."""
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` at any depth (sorted), and the other non-hidden files (skipped).

    Linked folders are followed, but never into a loop: a folder already walked (a link to it, or to one
    of its parents, such as ``cat/loop -> ..``) is not walked again, so no image is counted twice or
    under another class's label."""
    images: list[Path] = []
    skipped: list[Path] = []
    seen: set[tuple[int, int]] = set()
    top = Path(folder).resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        upward = dirpath != str(folder) and top.is_relative_to(Path(dirpath).resolve())  # cat/x -> ..
        if (st.st_dev, st.st_ino) in seen or upward:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if is_image_name(name):
                images.append(Path(dirpath, name))
            elif not name.startswith("."):
                skipped.append(Path(dirpath, name))
    return sorted(images), sorted(skipped)


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    """Class folders by their NFC name; two folders with one NFC name are an error."""
    out: dict[str, Path] = {}
    for p in sorted(split_dir.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        name = unicodedata.normalize("NFC", p.name)
        if name in out:
            raise SweeperError(
                f"class folders {out[name]} and {p} have the same name in unicode NFC form; merge them"
            )
        out[name] = p
    return out


def _loose_files(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def _scan_labelled(split_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Images by class name, and the skipped files (non-images, and files outside class folders)."""
    dirs = _class_dirs(split_dir)
    if not dirs:
        raise SweeperError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>")
    out: dict[str, list[Path]] = {}
    skipped = _loose_files(split_dir)
    for c, d in dirs.items():
        files, other = _walk(d)
        if not files:
            raise SweeperError(
                f"class folder {d} is empty: it holds no image files ({', '.join(IMG_EXTENSIONS)}); add "
                "images or remove the folder"
            )
        out[c] = files
        skipped += other
    return out, skipped


def _scan_test(test_dir: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int] | None, list[Path]]:
    """Test files, their labels when ``test/`` holds only class folders, and the skipped files."""
    if not test_dir.is_dir():
        return [], None, []
    dirs = _class_dirs(test_dir)
    loose = _loose_files(test_dir)
    if dirs and not any(is_image_name(p.name) for p in loose) and set(dirs) <= set(classes):
        files, labels, skipped = [], [], loose
        for i, c in enumerate(classes):
            found, other = _walk(dirs[c]) if c in dirs else ([], [])
            files += found
            labels += [i] * len(found)
            skipped += other
        return files, labels, skipped
    files, skipped = _walk(test_dir)
    return files, None, skipped


def _check_unique_ids(files: Sequence[Path]) -> None:
    """The file name without extension is a test image's submission id: two files must not share one."""
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise SweeperError(
                f"test images {seen[f.stem]} and {f} have the same submission id {f.stem!r} (the file "
                "name without extension); rename or remove one"
            )
        seen[f.stem] = f


class BadImage(SweeperError):
    """An image file that cannot be read or decoded: the data's problem, named by its path."""


def _unreadable(path: Path, e: BaseException) -> SweeperError:
    return BadImage(f"unreadable image {path}: {e}; remove or replace the file")


def check_header(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Open the header: cheap, and enough to name a file that is not an image, or one over the limit."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise _unreadable(path, e) from None
    if w * h > max_pixels:
        raise SweeperError(
            f"image {path} has {w}x{h} = {w * h} pixels, over the limit of {max_pixels} that guards against "
            "decompression bombs; if it is genuine, raise data: {max_pixels: N} in the study file"
        )


def check_decodes(files: Sequence[Path]) -> None:
    """Decode every file fully (truncated or corrupt data shows only then), once per version of the files.

    A stamp under the data dir, keyed by every file's path, size, mtime and inode, remembers a set of
    files that decoded, so a re-run does not decode them again.
    """
    if not files:
        return
    stamp = data_dir() / "decoded" / _digest(f"PIL {PIL.__version__}", files_version(files))
    if stamp.exists():
        return
    progress = meter.counter("decode check", len(files))
    # threads: PIL decodes with the GIL released; results in file order, so the first bad file is named
    with ThreadPoolExecutor(max_workers=cores()) as pool:
        for i, _ in enumerate(pool.map(_decodes, files)):
            progress(i + 1)
    _remember(stamp)


def _decodes(path: Path) -> None:
    decode_rgb(path)


def files_version(files: Sequence[Path]) -> str:
    """A digest of every file's path, size, mtime and inode: changes when any file is added, removed,
    replaced or edited."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()[:24]


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]


def _remember(stamp: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only data dir: checked, just not remembered
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()


def _check_root(root_path: Path) -> None:
    if not root_path.is_dir():
        raise SweeperError(
            f"data root {root_path} does not exist; pass --data ROOT with ROOT/train/<class>/ and "
            "ROOT/val/<class>/ folders, or use data root builtin:digits"
        )
    for split in ("train", "val"):
        if not (root_path / split).is_dir():
            raise SweeperError(
                f"{root_path / split} is missing; expected {root_path}/{split}/<class>/<images>"
            )


def scan(
    root: str | Path,
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    duplicates: Literal["error", "warn"] = "error",
) -> ImageFolderData:
    """Scan and check ROOT; every problem is a one-line SweeperError naming the path.

    Args:
        root: the dataset root, or ``builtin:digits``.
        check_images: open every file's header (and fully decode the test images) so a bad file is named
            before training.
        max_pixels: the largest width x height accepted (the study's ``data.max_pixels``).
        duplicates: the same file content in two splits (or twice in one) is an error, or with
            ``warn`` a warning on stderr (the study's ``data.duplicates``).
    """
    root_path = materialize_builtin() if str(root) == BUILTIN else Path(root)
    _check_root(root_path)
    (train, skip_t), (val, skip_v) = _scan_labelled(root_path / "train"), _scan_labelled(root_path / "val")
    if set(train) != set(val):
        only_t, only_v = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise SweeperError(
            f"train and val class folders differ under {root_path}: only in train: {only_t or 'none'}; "
            f"only in val: {only_v or 'none'}; both splits need the same class folders"
        )
    classes = tuple(sorted(train))
    if len(classes) < 2:
        raise SweeperError(
            f"{root_path / 'train'} has {len(classes)} class folder ({', '.join(classes)}); a classifier "
            "needs at least two, and one class would score a meaningless 1.0"
        )
    test, test_labels, skip_test = _scan_test(root_path / "test", classes)
    _check_unique_ids(test)
    version = _check_files(_flat(train), _flat(val), test, check_images, max_pixels, duplicates)

    def split(d: dict[str, list[Path]]) -> Split:
        pairs = [(f, i) for i, c in enumerate(classes) for f in d[c]]
        return Split(tuple(f for f, _ in pairs), tuple(y for _, y in pairs), version)

    return ImageFolderData(
        root_path,
        classes,
        split(train),
        split(val),
        tuple(test),
        None if test_labels is None else tuple(test_labels),
        tuple(skip_t + skip_v + skip_test),
    )


def _check_files(
    train: list[Path],
    val: list[Path],
    test: list[Path],
    check_images: bool,
    max_pixels: int,
    duplicates: Literal["error", "warn"],
) -> str:
    """No file twice, every header readable and within ``max_pixels``, the test images decodable: once
    per version of the files (a stamp remembers a set that passed; any change checks all again).
    Returns that version."""
    version = files_version([*train, *val, *test])
    stamp = (
        data_dir()
        / "scanned"
        / _digest(f"PIL {PIL.__version__}", version, check_images, max_pixels, duplicates)
    )
    if not stamp.exists():
        check_apart({"train": train, "val": val, "test": test}, duplicates)
        if check_images:
            for f in (*train, *val, *test):
                check_header(f, max_pixels)
            check_decodes(test)
        _remember(stamp)
    return version


def _flat(by_class: dict[str, list[Path]]) -> list[Path]:
    return [f for files in by_class.values() for f in files]


def _same(keyed: Iterable[tuple[K, tuple[str, Path]]]) -> dict[K, list[tuple[str, Path]]]:
    """Files grouped by a key, only the groups of two or more."""
    groups: dict[K, list[tuple[str, Path]]] = {}
    for key, item in keyed:
        groups.setdefault(key, []).append(item)
    return {k: g for k, g in groups.items() if len(g) > 1}


def _start(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4096)


def check_apart(splits: dict[str, Sequence[Path]], duplicates: Literal["error", "warn"] = "error") -> None:
    """The same file (a link, or a copy: equal bytes) reachable twice, in one split or two, leaks val
    into train or gives one image two labels. Files are compared by size first, then by their first
    4 kB, then by content (photos of one size almost always differ early: the full read is for those
    that do not)."""
    by_size = _same((os.stat(f).st_size, (s, f)) for s, files in splits.items() for f in files)
    for group in by_size.values():
        for alike in _same((_start(f), (s, f)) for s, f in group).values():
            _same_bytes(alike, duplicates)


def _same_bytes(group: list[tuple[str, Path]], duplicates: Literal["error", "warn"]) -> None:
    """Compare by content files that agree in size and start; say each copy found."""
    by_hash: dict[str, tuple[str, Path]] = {}
    for split, f in group:
        digest = hashlib.sha1(f.read_bytes()).hexdigest()
        if digest not in by_hash:
            by_hash[digest] = (split, f)
            continue
        first_split, first = by_hash[digest]
        if first_split == split == "test":
            continue  # two unlabelled copies to predict: no label is wrong, nothing leaks
        harm = "leaks val into train" if {first_split, split} == {"train", "val"} else "counts twice"
        line = (
            f"the same image is in {first_split} ({first}) and {split} ({f}): it {harm}; remove "
            "one copy, or set data: {duplicates: warn} in the study to go on"
        )
        if duplicates == "error":
            raise SweeperError(line)
        print(f"warning: {line}", file=sys.stderr)


def hold_out(data: ImageFolderData, fraction: float, seed: int = 0) -> ImageFolderData:
    """Move a stratified ``fraction`` of every class's train images to val (``data.val_from_train``).

    The validation set becomes val plus the held-out images: a larger validation set has a smaller
    binomial standard error, sqrt(p(1-p)/n_val), so a study can resolve smaller effects. Seeded, so every
    trial, resume and refit of a study sees the same split; every class keeps at least one train image.
    """
    if fraction <= 0:
        return data
    rng = np.random.default_rng(seed)
    labels = np.array(data.train.labels)
    moved: list[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        moved += idx[: min(int(round(fraction * len(idx))), len(idx) - 1)].tolist()
    out = set(moved)

    def pick(ix: Sequence[int]) -> Split:
        tr = data.train
        return Split(tuple(tr.files[i] for i in ix), tuple(tr.labels[i] for i in ix), tr.version)

    kept = [i for i in range(len(data.train)) if i not in out]
    return dataclasses.replace(data, train=pick(kept), val=data.val + pick(sorted(out)))


def kfold(split: Split, k: int, seed: int) -> list[tuple[Split, Split]]:
    """Stratified k-fold: ``k`` (train, val) pairs; every image is in exactly one val fold.

    Each class's images are shuffled with ``seed`` and dealt round-robin into the folds, so every fold
    holds about 1/k of every class.
    """
    if not 2 <= k <= len(split):
        raise SweeperError(f"folds={k} needs 2 <= folds <= the {len(split)} labelled images")
    rng = np.random.default_rng(seed)
    labels = np.asarray(split.labels)
    fold_of = np.empty(len(split), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = np.arange(len(idx)) % k
    out = []
    for f in range(k):

        def pick(mask: np.ndarray) -> Split:
            ids = np.flatnonzero(mask)
            return Split(
                tuple(split.files[i] for i in ids), tuple(split.labels[i] for i in ids), split.version
            )

        out.append((pick(fold_of != f), pick(fold_of == f)))
    return out


def decode_rgb(path: Path) -> np.ndarray:
    """Decode one file to ``H x W x 3`` uint8 RGB pixels, upright (EXIF orientation applied), with the
    decoder every logged model carries (:func:`sweeper.servable.pixels.decode`).

    Raises:
        BadImage: the file is not an image this machine can decode, or its data is cut short.
    """
    try:
        return decode(path)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise _unreadable(path, e) from None


# ---- the built-in dataset ---------------------------------------------------------------------


def data_dir() -> Path:
    """Where generated datasets and caches live: ``$SWEEPER_DATA_DIR`` or ``~/.cache/sweeper``."""
    return Path(os.environ.get("SWEEPER_DATA_DIR", Path.home() / ".cache" / "sweeper"))


def materialize_builtin(size: int = 32) -> Path:
    """Write scikit-learn's digits once as ``train/``, ``val/`` and ``test/`` PNG folders.

    70/20/10 per class, deterministic. The test images are unlabelled (their labels go to
    ``test_labels.csv`` beside the folders, for checking predictions). Built in a temporary folder and
    renamed into place, so concurrent workers never see a half-written dataset.
    """
    target = data_dir() / f"digits-{size}px"
    if (target / "val").is_dir():
        return target
    from sklearn.datasets import load_digits

    digits = load_digits()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=target.parent))
    rng = np.random.default_rng(0)
    rows = ["image_name,label"]
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        n_train, n_val = int(0.7 * len(idx)), int(0.2 * len(idx))
        parts = {
            "train": idx[:n_train],
            "val": idx[n_train : n_train + n_val],
            "test": idx[n_train + n_val :],
        }
        for split, ids in parts.items():
            for i in ids:
                pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                im = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
                if split == "test":
                    name = f"digit_{i:04d}"
                    out = tmp / "test" / f"{name}.png"
                    rows.append(f"{name},{label}")
                else:
                    out = tmp / split / str(label) / f"{i:04d}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                im.save(out)
    (tmp / "test_labels.csv").write_text("\n".join(rows) + "\n")
    try:
        tmp.rename(target)
    except OSError:  # another worker won the race: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target
