"""Decode once per sweep: a dataset's images, decoded and pre-resized, in one memory-mapped file.

A sweep trains hundreds of times on the same files; decoding every JPEG in every epoch of every trial
is the first waste. The first trial that needs a dataset at a given size decodes every file once and
writes its uint8 pixels (height x width x 3, as decoders lay them out) into ``pixels.u8`` under the
data dir (:mod:`sweeper.data.build`: sizes from the headers, said and checked against the budget
before the build, workers writing into the pre-sized file). Every later trial, and every DataLoader
worker, maps that file read-only; the page cache shares it across processes.

A run keeps two caches, each bounded by what it reads. The training images are shrunk
(:class:`ShrinkShortSide`, aspect kept, never enlarged) to the short side at which the median
RandomResizedCrop is still cut from as many pixels as a full decode gives it (:func:`train_short_side`:
305 for crops to 224 at torchvision's default scale and ratio), or ``cache_scale`` x the input size
where a study sets it. The images a run evaluates are held as the eval transform's deterministic
geometry leaves them (``augment.EvalCrop``), so every validation and hold-out pixel is the one
``predict`` computes from the file; training never reads that copy, evaluation never the shrunk one.

The cache is keyed by every file's path, size, mtime and inode (as the sweep's scan found them, when
the splits carry its version: a trial does not stat them again), the resize and the library
versions; a changed file makes a new key at the next scan (the old cache is deleted). Builds take a
file lock, so a second worker waits and then maps the first one's cache, and write to a temporary
folder renamed into place, so no reader ever sees half a cache. A dataset over the disk budget
(``$SWEEPER_CACHE_GB``, default half the free space) is decoded per epoch instead, with a message.

The build is also the check that every image decodes: a truncated or corrupt file stops it with a
one-line error naming the file, before the trial trains. Without a cache (over the budget, or turned
off) the files are fully decoded once instead (:func:`sweeper.data.images.check_decodes`), for the same
reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sweeper.data import build
from sweeper.data.build import Resizer
from sweeper.data.images import check_decodes, data_dir

if TYPE_CHECKING:  # torchvision is imported where it is used
    from torchvision.transforms import InterpolationMode

log = logging.getLogger("sweeper")
VERSION = 4  # bump when the file layout or the decoded pixels change (4: shrink-only short side)
_over_budget: set[str] = set()  # keys already found too big in this process: say so once


Wanted = tuple[Sequence[Path], Resizer]
"""One cache: the files it holds, in a fixed order, and what it applies to each of them once."""


def resize_key(resize: Resizer) -> str:
    """What about a torchvision ``Resize`` changes the cached pixels."""
    if isinstance(getattr(resize, "key", None), str):  # a resizer that names itself (augment.EvalCrop)
        return str(resize.key)  # type: ignore[attr-defined]
    size = resize.size if isinstance(resize.size, int) else list(resize.size)
    interpolation = str(getattr(resize.interpolation, "value", resize.interpolation))
    shrink = ["shrink"] if getattr(resize, "shrink_only", False) else []
    return json.dumps([size, interpolation, resize.antialias, resize.max_size, *shrink])


class ShrinkShortSide:
    """Resize an image so its short side is ``size``, aspect kept; an image already that small is kept."""

    antialias, max_size, shrink_only = True, None, True

    def __init__(self, size: int, interpolation: InterpolationMode) -> None:
        self.size, self.interpolation = size, interpolation

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if min(img.shape[-2:]) <= self.size:
            return img
        return F.resize(img, self.size, interpolation=self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return f"ShrinkShortSide({self.size})"


def train_short_side(size: int, scale: tuple[float, float] | None, ratio: tuple[float, float]) -> int:
    """The short side a training cache keeps for crops to ``size``: the median RandomResizedCrop is cut
    from as many pixels as a full decode would give it; ``scale`` None (no random crop: the whole image
    is resized to ``size``) keeps ``size``.

    torchvision draws a crop's area share uniformly in ``scale`` and its aspect log-uniformly in
    ``ratio``. The median crop (share ``(lo + hi) / 2``, aspect the ratios' geometric mean ``r``) of a
    square image of side S has a short side of ``S * sqrt(share / max(r, 1 / r))``; it must reach
    ``size``. Larger crops (half of them) are shrunk from more pixels than they keep; smaller ones are
    upsampled from fewer than a full decode of a larger photo would give them (at the default 0.08-1,
    the smallest by 2.6x a side). A wider image only gives every crop more pixels.
    """
    if scale is None:
        return size
    share = (scale[0] + scale[1]) / 2
    aspect = math.sqrt(ratio[0] * ratio[1])
    return math.ceil(size * math.sqrt(max(aspect, 1 / aspect) / share) - 1e-9)


def fingerprint(files: Sequence[Path], resize: Resizer, version: str = "") -> str:
    """A key that changes when any file (path, size, mtime, inode), the resize or the decoders change.

    ``version`` is those files' version as the sweep's scan found it (:attr:`images.Split.version`): the
    key then hashes it and the paths instead of statting every file again in every trial.
    """
    import PIL
    import torchvision

    versions = f"tv {torchvision.__version__}|PIL {PIL.__version__}"
    h = hashlib.sha256(f"v{VERSION}|{resize_key(resize)}|{versions}|{version}".encode())
    for f in files:
        if version:
            h.update(f"{os.path.abspath(f)}\n".encode())
            continue
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()[:24]


def budget_bytes(where: Path) -> int:
    """``$SWEEPER_CACHE_GB`` (0 turns the cache off), else half the free space where caches live."""
    env = os.environ.get("SWEEPER_CACHE_GB")
    if env is not None:
        return int(float(env) * 1e9)
    where.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(where).free // 2


class ImageCache(Mapping):
    """Read-only view of a built cache: ``cache[path]`` is that file's resized uint8 ``[3, H, W]`` tensor.

    Pickles without its memory map (each DataLoader worker maps the file itself), so it works with
    both fork and spawn start methods.
    """

    def __init__(self, folder: Path, files: Sequence[Path]) -> None:
        self.folder = folder
        self.index = np.load(folder / "index.npy")  # [N, 3]: offset, height, width
        self.rows = {os.fspath(f): i for i, f in enumerate(files)}
        self._pixels: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Path]:
        return (Path(f) for f in self.rows)

    def __contains__(self, file: object) -> bool:
        return isinstance(file, (str, os.PathLike)) and os.fspath(file) in self.rows

    def __getitem__(self, file: Path) -> torch.Tensor:
        # a copy: transforms get a writable tensor and the map stays read-only. [3, H, W] over
        # channels-last memory, exactly like a decoded file (tensors.load_image)
        pixels, h, w = self._row(file)
        return torch.from_numpy(np.array(pixels)).view(h, w, 3).permute(2, 0, 1)

    def view(self, file: Path) -> torch.Tensor:
        """``file``'s pixels where they lie in the map, without a copy: for a reader that only copies
        part of them out (``device_crop.HostCrop``). The map is read-only: a write would fault."""
        pixels, h, w = self._row(file)
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # torch: "not writable"
            return torch.from_numpy(pixels).view(h, w, 3).permute(2, 0, 1)

    def _row(self, file: Path) -> tuple[np.ndarray, int, int]:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        off, h, w = (int(v) for v in self.index[self.rows[os.fspath(file)]])
        return self._pixels[off : off + 3 * h * w], h, w

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}


def _build(
    todo: Sequence[tuple[Wanted, Path]],
    sizes: dict[Path, tuple[int, int]],
    workers: int,
    progress: build.Progress | None,
) -> None:
    """Decode each file once into every cache's temporary folder, then rename each to its target."""
    tmps = [Path(tempfile.mkdtemp(prefix=f".{t.name}-", dir=t.parent)) for _, t in todo]
    try:
        plans = [
            build.plan(files, r, tmp / "pixels.u8", sizes)
            for ((files, r), _), tmp in zip(todo, tmps, strict=True)
        ]
        indexes = build.write(plans, workers, progress)
        for ((files, resize), target), tmp, index, p in zip(todo, tmps, indexes, plans, strict=True):
            np.save(tmp / "index.npy", index)
            meta = {
                "version": VERSION,
                "resize": resize_key(resize),
                "images": len(files),
                "bytes": p.bytes,
                "family": _family(files, resize),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            os.rename(tmp, target)
    except BaseException:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _family(files: Sequence[Path], resize: Resizer) -> str:
    """Same dataset folder and resize, any file contents: caches that a new build makes stale."""
    folder = os.path.commonpath([os.path.abspath(f) for f in files])
    return hashlib.sha256(f"{folder}|{resize_key(resize)}".encode()).hexdigest()[:16]


def _remove_stale(root: Path, keep: Path, family: str) -> None:
    """Delete older caches of the same dataset and size (open maps of them stay valid on POSIX)."""
    for d in root.iterdir():
        if d == keep or not d.is_dir() or d.name.startswith("."):
            continue
        try:
            if json.loads((d / "meta.json").read_text()).get("family") == family:
                shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue


def open_cache(
    files: Sequence[Path],
    resize: Resizer,
    workers: int = 0,
    root: Path | None = None,
    progress: build.Progress | None = None,
) -> ImageCache | None:
    """The cache of ``files`` through ``resize``: :func:`open_caches` with one cache."""
    return open_caches([(files, resize)], workers, root, progress)[0]


def open_caches(
    wanted: Sequence[Wanted],
    workers: int = 0,
    root: Path | None = None,
    progress: build.Progress | None = None,
    version: str = "",
) -> list[ImageCache | None]:
    """Each cache of ``wanted`` (its files, its resizer), the missing ones built in one decoding pass;
    None for a cache over the disk budget (caches earlier in the list get the budget first).

    Args:
        wanted: ``(files, resizer)`` per cache: the files in a fixed order, and what the cache applies to
            every one of them once (e.g. a :class:`ShrinkShortSide`).
        workers: decoding processes for the first build.
        root: where caches live; default ``<data dir>/cache``.
        progress: called as ``progress(done, total)`` while building; default this process's meter.
        version: the files' version from the sweep's scan (see :func:`fingerprint`); "" = stat them.
    """
    if not any(files for files, _ in wanted):
        return [None] * len(wanted)
    if os.environ.get("SWEEPER_CACHE_GB") is not None and budget_bytes(Path(".")) == 0:
        check_decodes(
            _union(wanted)
        )  # turned off on purpose, whatever caches exist: no build to find a bad file
        return [None] * len(wanted)
    root = root or data_dir() / "cache"
    keys = [fingerprint(files, r, version) if files else "" for files, r in wanted]
    found = {k: _ready(root, k, w[0]) for k, w in zip(keys, wanted, strict=True) if k}
    missing = [
        (k, w) for k, w in zip(keys, wanted, strict=True) if k and found[k] is None and k not in _over_budget
    ]
    if missing:
        found |= _build_missing(missing, workers, root, progress)
    return [found.get(k) for k in keys]


def _union(wanted: Sequence[Wanted]) -> list[Path]:
    return sorted({f for files, _ in wanted for f in files})


def _ready(root: Path, key: str, files: Sequence[Path]) -> ImageCache | None:
    if key in _over_budget or not (root / key / "meta.json").is_file():
        return None
    return ImageCache(root / key, files)  # built before: read as it is, even where nothing can be written


def _build_missing(
    missing: list[tuple[str, Wanted]], workers: int, root: Path, progress: build.Progress | None
) -> dict[str, ImageCache | None]:
    """Build the caches not there yet under their locks (a second worker waits, then maps them)."""
    from filelock import FileLock

    files = _union([w for _, w in missing])
    try:
        root.mkdir(parents=True, exist_ok=True)
        locks = [FileLock(str(root / f".{k}.lock")) for k, _ in sorted(missing, key=lambda m: m[0])]
        for lock in locks:  # can this process write here at all? (taken again below)
            with lock:
                pass
    except OSError as e:  # a read-only data dir (a shared cache mounted read-only) without this cache
        log.warning(
            f"sweeper: cannot build the decoded-image cache in {root} ({e.strerror or e}): decoding every "
            "image in every epoch instead; build it where it is writable, or point SWEEPER_DATA_DIR there"
        )
        check_decodes(files)
        _over_budget.update(k for k, _ in missing)
        return {}
    with contextlib.ExitStack() as held:
        for lock in locks:  # in key order: two builders never hold one lock each and wait on the other
            held.enter_context(lock)
        found = {k: _ready(root, k, w[0]) for k, w in missing}  # built while we waited?
        wanted = [(k, w) for k, w in missing if found[k] is None]
        sizes = {f: build.upright_size(f) for f in _union([w for _, w in wanted])}  # headers only
        todo = _within_budget(wanted, sizes, root)
        if not todo:
            if any(v is None for v in found.values()):
                check_decodes(files)  # no build to find a bad file before training: decode each once now
            return found
        for leftover in (p for k, _ in todo for p in root.glob(f".{k}-*")):  # a build killed half-way
            shutil.rmtree(leftover, ignore_errors=True)
        t0 = time.perf_counter()
        _build([(w, root / k) for k, w in todo], sizes, workers, progress)
        log.info(f"sweeper: cached {len(sizes)} decoded images in {time.perf_counter() - t0:.1f}s at {root}")
        for k, (files_k, r) in todo:
            _remove_stale(root, root / k, _family(files_k, r))
            found[k] = ImageCache(root / k, files_k)
    return found


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def describe(resize: Resizer) -> str:
    """What a cache holds of each image, in words."""
    if isinstance(resize, ShrinkShortSide):
        return f"at short side {resize.size} (for training crops)"
    if hasattr(resize, "key"):  # augment.EvalCrop
        h, w = resize.size  # type: ignore[misc]
        return f"as {h}x{w} eval crops"
    return f"through {resize_key(resize)}"


def _within_budget(
    wanted: list[tuple[str, Wanted]], sizes: dict[Path, tuple[int, int]], root: Path
) -> list[tuple[str, Wanted]]:
    """The caches that fit the disk budget, in the order asked, each said with its size before it is
    built; the others are said once and skipped."""
    budget = budget_bytes(root)
    if budget == 0:  # turned off on purpose, no message
        _over_budget.update(k for k, _ in wanted)
        return []
    fits, used = [], 0
    for key, (files, resize) in wanted:
        need = 3 * sum(int(np.prod(build.output_shape(sizes[f], resize))) for f in files)
        jpeg = sum(os.stat(f).st_size for f in files)
        if used + need <= budget:
            fits.append((key, (files, resize)))
            used += need
            print(
                f"sweeper: image cache: {len(files):,} images {describe(resize)}: {_size(need)} "
                f"({need / max(jpeg, 1):.1f}x their {_size(jpeg)} of files; budget "
                f"{_size(budget - used)} left, $SWEEPER_CACHE_GB)",
                file=sys.stderr,
                flush=True,
            )
            continue
        log.warning(
            f"sweeper: caching {len(files)} decoded images {describe(resize)} needs "
            f"{need / 1e9:.1f} GB, over the budget ($SWEEPER_CACHE_GB: {(budget - used) / 1e9:.1f} GB "
            "left); decoding every image in every epoch instead"
        )
        _over_budget.add(key)
    return fits
