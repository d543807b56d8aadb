"""Image folders in the reference layout, checked up front, and the built-in digits dataset.

Layout: ``ROOT/train/<class>/*``, ``ROOT/val/<class>/*`` and optionally ``ROOT/test/*`` (unlabelled;
file names are the submission ids). Classes are the sorted folder names. Any image PIL can read is
accepted and converted to RGB, so grayscale and RGBA images just work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sweeper.errors import SweeperError

BUILTIN = "builtin:digits"


@dataclass(frozen=True)
class Split:
    """Labelled image files; ``labels[i]`` indexes the dataset's class list."""

    files: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)

    def __add__(self, other: Split) -> Split:
        return Split(self.files + other.files, self.labels + other.labels)


@dataclass(frozen=True)
class ImageFolderData:
    """A scanned and checked dataset: class names, the train/val splits and the test files."""

    root: Path
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: tuple[Path, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """Every image of the dataset in a fixed order: what a decoded-image cache holds."""
        return self.train.files + self.val.files + self.test


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not _is_hidden(p))


def _check_readable(path: Path) -> None:
    """Open the header: cheap, and enough to name a file that is not an image at all."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - forces the header parse
    except (UnidentifiedImageError, OSError) as e:
        raise SweeperError(
            f"unreadable image {path}: {e.__class__.__name__}; remove or replace the file"
        ) from None


def _scan_labelled(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not _is_hidden(p))
    if not classes:
        raise SweeperError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image files>")
    out: dict[str, list[Path]] = {}
    for c in classes:
        files = _image_files(split_dir / c)
        if not files:
            raise SweeperError(f"class folder {split_dir / c} is empty; add images or remove the folder")
        out[c] = files
    return out


def scan(root: str | Path, check_images: bool = True) -> ImageFolderData:
    """Scan and check ROOT; every problem is a one-line SweeperError naming the path.

    Args:
        root: the dataset root, or ``builtin:digits``.
        check_images: open every file's header so an unreadable file is named before training.
    """
    root_path = materialize_builtin() if str(root) == BUILTIN else Path(root)
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
    train, val = _scan_labelled(root_path / "train"), _scan_labelled(root_path / "val")
    if set(train) != set(val):
        only_t, only_v = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise SweeperError(
            f"train and val class folders differ under {root_path}: only in train: {only_t or 'none'}; "
            f"only in val: {only_v or 'none'}; both splits need the same class folders"
        )
    classes = tuple(sorted(train))
    test_dir = root_path / "test"
    test = tuple(_image_files(test_dir)) if test_dir.is_dir() else ()
    if check_images:
        for files in (*train.values(), *val.values(), test):
            for f in files:
                _check_readable(f)

    def split(d: dict[str, list[Path]]) -> Split:
        pairs = [(f, i) for i, c in enumerate(classes) for f in d[c]]
        return Split(tuple(f for f, _ in pairs), tuple(y for _, y in pairs))

    return ImageFolderData(root_path, classes, split(train), split(val), test)


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
            return Split(tuple(split.files[i] for i in ids), tuple(split.labels[i] for i in ids))

        out.append((pick(fold_of != f), pick(fold_of == f)))
    return out


def load_image(path: Path) -> torch.Tensor:
    """Decode one file to a uint8 ``[3, H, W]`` RGB tensor."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise SweeperError(f"unreadable image {path}: {e}; remove or replace the file") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


class ImageDataset(torch.utils.data.Dataset):
    """Files (and labels) -> transformed tensors. Labels are -1 for unlabelled test images.

    With ``images`` (a decoded-image cache, see :mod:`sweeper.cache`) a file's pixels come from the
    cache instead of its decoder; files the cache does not hold are decoded as usual.
    """

    def __init__(
        self,
        files: tuple[Path, ...],
        labels: tuple[int, ...] | None,
        transform,
        images: Mapping[Path, torch.Tensor] | None = None,
    ) -> None:
        self.files, self.transform, self.images = files, transform, images
        self.labels = labels if labels is not None else (-1,) * len(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        f = self.files[i]
        img = self.images[f] if self.images is not None and f in self.images else load_image(f)
        return self.transform(img), self.labels[i]


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
