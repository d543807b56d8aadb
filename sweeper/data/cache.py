"""Decode once per sweep: a dataset's images, decoded and pre-resized, in one memory-mapped file.

A sweep trains hundreds of times on the same files; decoding every JPEG in every epoch of every trial
is the first waste. The first trial that needs a dataset at a given size decodes every file once,
shrinks it (:class:`ShrinkShortSide`, aspect kept, never enlarged) and appends the uint8 pixels
(height x width x 3, as decoders lay them out) to ``pixels.u8`` under the data dir. Every later
trial, and every DataLoader worker, maps that file read-only; the page cache shares it across processes.

What the shrink does to augmentation: the cached short side is at least ``cache_scale`` x the input
size (and at least the eval resize), so a RandomResizedCrop covering ``1 / cache_scale**2`` of the
image or more (a quarter at the default 2) is cut from as many pixels as a full decode would give it;
smaller crops are upsampled a little more than from the original. Images smaller than that are cached
as decoded. Evaluation never reads the shrunk copy: a second cache, built in the same decoding pass,
holds each image as the eval transform's deterministic geometry leaves it (``augment.EvalCrop``), so
every validation and test pixel is the one ``predict`` computes from the file.

The cache is keyed by every file's path, size, mtime and inode, the resize and the library
versions; a changed file makes a new key (the old cache is deleted). Builds take a file lock, so a
second worker waits and then maps the first one's cache, and write to a temporary folder renamed
into place, so no reader ever sees half a cache. A dataset over the disk budget
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
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image

from sweeper import meter
from sweeper.data.images import BadImage, check_decodes, data_dir
from sweeper.data.tensors import load_image
from sweeper.data.workers import worker_context
from sweeper.errors import SweeperError

if TYPE_CHECKING:  # torchvision is imported where it is used
    from torchvision.transforms import InterpolationMode

log = logging.getLogger("sweeper")
VERSION = 4  # bump when the file layout or the decoded pixels change (4: shrink-only short side)
_over_budget: set[str] = set()  # keys already found too big in this process: say so once


class Resizer(Protocol):
    """What the cache applies to every image once, and keys on: a torchvision ``Resize``, or a
    :class:`ShrinkShortSide` (which also says ``shrink_only``)."""

    @property
    def size(self) -> int | Sequence[int]: ...
    @property
    def interpolation(self) -> InterpolationMode: ...
    @property
    def antialias(self) -> bool | None: ...
    @property
    def max_size(self) -> int | None: ...
    def __call__(self, img: torch.Tensor) -> torch.Tensor: ...


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


def cached_short_side(eval_resize: int, input_size: int, cache_scale: float) -> int:
    """The short side a trial's cache keeps: the eval resize, or ``cache_scale`` x the input if larger."""
    return max(eval_resize, math.ceil(cache_scale * input_size))


def fingerprint(files: Sequence[Path], resize: Resizer) -> str:
    """A key that changes when any file (path, size, mtime, inode), the resize or the decoders change."""
    import PIL
    import torchvision

    versions = f"tv {torchvision.__version__}|PIL {PIL.__version__}"
    h = hashlib.sha256(f"v{VERSION}|{resize_key(resize)}|{versions}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()[:24]


def estimate_bytes(files: Sequence[Path], resize: Resizer) -> int:
    """Bytes the cache will take, from the image headers (no decoding)."""
    total = 0
    for f in files:
        with Image.open(f) as im:
            w, h = im.size
        if isinstance(resize.size, int) or len(resize.size) == 1:
            short = resize.size if isinstance(resize.size, int) else resize.size[0]
            if getattr(resize, "shrink_only", False):
                short = min(short, w, h)
            total += 3 * short * int(short * max(w, h) / min(w, h))
        else:
            total += 3 * resize.size[0] * resize.size[1]
    return total


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
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        off, h, w = (int(v) for v in self.index[self.rows[os.fspath(file)]])
        # a copy: transforms get a writable tensor and the map stays read-only. [3, H, W] over
        # channels-last memory, exactly like a decoded file (tensors.load_image)
        return torch.from_numpy(np.array(self._pixels[off : off + 3 * h * w])).view(h, w, 3).permute(2, 0, 1)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}


class _Decode(torch.utils.data.Dataset):
    """Each file decoded once and put through every resizer being built."""

    def __init__(self, files: Sequence[Path], resizers: Sequence[Resizer]) -> None:
        self.files, self.resizers = files, resizers

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> list[torch.Tensor] | str:
        try:
            img = load_image(self.files[i])
        except SweeperError as e:  # raised by the builder: a worker's exception comes back with its traceback
            return str(e)
        # stored height x width x 3, the layout decoders produce and torchvision's uint8 resize is fastest on
        return [r(img).permute(1, 2, 0).contiguous() for r in self.resizers]


def _build(
    files: Sequence[Path],
    resizers: Sequence[Resizer],
    targets: Sequence[Path],
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Decode each file once (in ``workers`` processes) into every resizer's temporary folder, then
    rename each to its target. ``progress(done)`` hears how many images are decoded so far."""
    tmps = [Path(tempfile.mkdtemp(prefix=f".{t.name}-", dir=t.parent)) for t in targets]
    try:
        index = np.zeros((len(targets), len(files), 3), dtype=np.int64)
        offsets = [0] * len(targets)
        decoded = torch.utils.data.DataLoader(  # own generator: building leaves the trial's RNG untouched
            _Decode(files, resizers),
            batch_size=None,
            num_workers=workers,
            multiprocessing_context=worker_context(workers),
            generator=torch.Generator(),
        )
        with contextlib.ExitStack() as stack:
            outs = [stack.enter_context(open(tmp / "pixels.u8", "wb")) for tmp in tmps]
            for i, imgs in enumerate(decoded):
                if isinstance(imgs, str):  # a worker's BadImage, as its one line
                    raise BadImage(imgs)
                for k, (img, out) in enumerate(zip(imgs, outs, strict=True)):
                    index[k, i] = (offsets[k], img.shape[0], img.shape[1])
                    out.write(memoryview(img.numpy()).cast("B"))
                    offsets[k] += img.numel()
                if progress is not None:
                    progress(i + 1)
            for out in outs:
                out.flush()
                os.fsync(out.fileno())
        for k, (tmp, resize, target) in enumerate(zip(tmps, resizers, targets, strict=True)):
            np.save(tmp / "index.npy", index[k])
            meta = {
                "version": VERSION,
                "resize": resize_key(resize),
                "images": len(files),
                "bytes": offsets[k],
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
    files: Sequence[Path], resize: Resizer, workers: int = 0, root: Path | None = None
) -> ImageCache | None:
    """The cache of ``files`` through ``resize``: :func:`open_caches` with one resizer."""
    return open_caches(files, [resize], workers, root)[0]


def open_caches(
    files: Sequence[Path], resizers: Sequence[Resizer], workers: int = 0, root: Path | None = None
) -> list[ImageCache | None]:
    """The caches of ``files`` through each resizer, the missing ones built in one decoding pass; None
    for a cache over the disk budget (resizers earlier in the list get the budget first).

    Args:
        files: every file the trials will read (train, val and test), in a fixed order.
        resizers: what each cache applies to every image once (e.g. a :class:`ShrinkShortSide`).
        workers: decoding processes for the first build.
        root: where caches live; default ``<data dir>/cache``.
    """
    if not files:
        return [None] * len(resizers)
    if os.environ.get("SWEEPER_CACHE_GB") is not None and budget_bytes(Path(".")) == 0:
        check_decodes(files)  # turned off on purpose, whatever caches exist: no build to find a bad file
        return [None] * len(resizers)
    root = root or data_dir() / "cache"
    keys = [fingerprint(files, r) for r in resizers]
    found = {k: _ready(root, k, files) for k in keys}
    missing = [
        (k, r) for k, r in zip(keys, resizers, strict=True) if found[k] is None and k not in _over_budget
    ]
    if missing:
        found |= _build_missing(files, missing, workers, root)
    return [found.get(k) for k in keys]


def _ready(root: Path, key: str, files: Sequence[Path]) -> ImageCache | None:
    if key in _over_budget or not (root / key / "meta.json").is_file():
        return None
    return ImageCache(root / key, files)  # built before: read as it is, even where nothing can be written


def _build_missing(
    files: Sequence[Path], missing: list[tuple[str, Resizer]], workers: int, root: Path
) -> dict[str, ImageCache | None]:
    """Build the caches not there yet under their locks (a second worker waits, then maps them)."""
    from filelock import FileLock

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
        found = {k: _ready(root, k, files) for k, _ in missing}  # built while we waited?
        todo = _within_budget(files, [(k, r) for k, r in missing if found[k] is None], root)
        if not todo:
            if any(v is None for v in found.values()):
                check_decodes(files)  # no build to find a bad file before training: decode each once now
            return found
        for leftover in (p for k, _ in todo for p in root.glob(f".{k}-*")):  # a build killed half-way
            shutil.rmtree(leftover, ignore_errors=True)
        t0 = time.perf_counter()
        targets = [root / k for k, _ in todo]
        _build(files, [r for _, r in todo], targets, workers, meter.counter("cache build", len(files)))
        log.info(f"sweeper: cached {len(files)} decoded images in {time.perf_counter() - t0:.1f}s at {root}")
        for (k, r), target in zip(todo, targets, strict=True):
            _remove_stale(root, target, _family(files, r))
            found[k] = ImageCache(target, files)
    return found


def _within_budget(
    files: Sequence[Path], wanted: list[tuple[str, Resizer]], root: Path
) -> list[tuple[str, Resizer]]:
    """The caches that fit the disk budget, in the order asked; the others are said once and skipped."""
    budget = budget_bytes(root)
    if budget == 0:  # turned off on purpose, no message
        _over_budget.update(k for k, _ in wanted)
        return []
    fits, used = [], 0
    for key, resize in wanted:
        need = estimate_bytes(files, resize)
        if used + need <= budget:
            fits.append((key, resize))
            used += need
            continue
        log.warning(
            f"sweeper: caching {len(files)} decoded images at {resize_key(resize)} needs "
            f"{need / 1e9:.1f} GB, over the budget ($SWEEPER_CACHE_GB: {(budget - used) / 1e9:.1f} GB "
            "left); decoding every image in every epoch instead"
        )
        _over_budget.add(key)
    return fits
