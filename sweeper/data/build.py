"""Building the decode-once cache: each image's size from its header, then workers decoding each file
once and writing every cache's copy of it straight into that cache's pre-sized pixel file.

Sizes are known before any decoding (the header's width and height, turned by its EXIF orientation,
through the resizer's own output-size rule), so the cache's bytes are printed and checked against the
budget before the build starts, and every image's offset in its file is fixed in advance: a worker
writes its pixels at that offset itself (``os.pwrite`` on the shared file) and sends the main process
only the image's shape. The main process only counts, reports progress and syncs the files at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sweeper import meter
from sweeper.data.images import BadImage, _unreadable
from sweeper.data.tensors import load_image
from sweeper.data.workers import worker_context
from sweeper.errors import SweeperError

if TYPE_CHECKING:  # torchvision is imported where it is used
    from torchvision.transforms import InterpolationMode


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


Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while a cache is built (images decoded so far, of all)."""
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def upright_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of the decoded image, from the header alone (EXIF orientation applied).

    Raises:
        BadImage: the header cannot be read (the decode would fail the same way).
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in _TRANSPOSED:
                w, h = h, w
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise _unreadable(path, e) from None
    return h, w


def output_shape(hw: tuple[int, int], resize: Resizer) -> tuple[int, int]:
    """``(height, width)`` after ``resize``: torchvision's rule for a short-side size (long side
    ``int(size * long / short)``), a fixed ``(h, w)``, or the image as it is for a shrink-only resizer
    that finds it small enough."""
    size = resize.size
    if not isinstance(size, int) and len(size) == 2:
        return int(size[0]), int(size[1])
    s = size if isinstance(size, int) else int(size[0])
    h, w = hw
    short, long = min(h, w), max(h, w)
    if getattr(resize, "shrink_only", False) and short <= s:
        return h, w
    new_long = int(s * long / short)
    return (s, new_long) if h <= w else (new_long, s)


@dataclass(frozen=True)
class Plan:
    """One cache to write: its files in order, its resizer, its pixel file and every image's offset."""

    files: Sequence[Path]
    resize: Resizer
    pixels: Path
    offsets: np.ndarray  # [N + 1] int64: image i's bytes are offsets[i]:offsets[i + 1]

    @property
    def bytes(self) -> int:
        return int(self.offsets[-1])


def plan(files: Sequence[Path], resize: Resizer, pixels: Path, sizes: dict[Path, tuple[int, int]]) -> Plan:
    """The offsets of ``files`` through ``resize``, from their upright header sizes."""
    per_image = [3 * int(np.prod(output_shape(sizes[f], resize))) for f in files]
    return Plan(files, resize, pixels, np.concatenate([[0], np.cumsum(per_image, dtype=np.int64)]))


class _Write(torch.utils.data.Dataset):
    """Item ``i``: decode file ``i`` once, write it through each plan that holds it at that plan's offset;
    returns ``[(plan, row, height, width), ...]``, or a bad image's one-line error."""

    def __init__(self, files: Sequence[Path], plans: Sequence[Plan]) -> None:
        self.files, self.plans = files, plans
        self.rows = [{os.fspath(f): i for i, f in enumerate(p.files)} for p in plans]
        self._fds: tuple[int, list[int]] | None = None  # (pid, one fd per plan): opened in each process

    def __len__(self) -> int:
        return len(self.files)

    def fds(self) -> list[int]:
        if self._fds is None or self._fds[0] != os.getpid():  # a forked worker opens its own
            self._fds = (os.getpid(), [os.open(p.pixels, os.O_WRONLY) for p in self.plans])
        return self._fds[1]

    def close(self) -> None:
        if self._fds is not None and self._fds[0] == os.getpid():
            for fd in self._fds[1]:
                os.close(fd)
        self._fds = None

    def __getitem__(self, i: int) -> list[tuple[int, int, int, int]] | str:
        f = self.files[i]
        try:
            img = load_image(f)
        except SweeperError as e:  # raised by the builder: a worker's exception comes back with its traceback
            return str(e)
        done = []
        for k, (p, rows) in enumerate(zip(self.plans, self.rows, strict=True)):
            row = rows.get(os.fspath(f))
            if row is None:
                continue
            # stored height x width x 3: the decoders' layout, which torchvision's uint8 resize is fastest on
            out = p.resize(img).permute(1, 2, 0).contiguous().numpy()
            start, end = int(p.offsets[row]), int(p.offsets[row + 1])
            if out.nbytes != end - start:
                return (
                    f"cannot cache {f}: it decoded to {out.shape[1]}x{out.shape[0]}, unlike its header says"
                )
            buf = out.data.cast("B")
            while buf:  # a regular file takes it whole, short of a full disk (which raises)
                n = os.pwrite(self.fds()[k], buf, start)
                buf, start = buf[n:], start + n
            done.append((k, row, out.shape[0], out.shape[1]))
        return done


def write(plans: Sequence[Plan], workers: int, progress: Progress | None = None) -> list[np.ndarray]:
    """Decode every file of ``plans`` once (in ``workers`` processes) into each plan's pixel file, which
    is created at its full size first; returns each plan's index (``[N, 3]``: offset, height, width).

    Raises:
        BadImage: a file does not decode (its one-line error, from whichever worker met it).
    """
    files = sorted({f for p in plans for f in p.files})
    for p in plans:
        with open(p.pixels, "wb") as out:
            out.truncate(p.bytes)
    index = [np.zeros((len(p.files), 3), dtype=np.int64) for p in plans]
    for idx, p in zip(index, plans, strict=True):
        idx[:, 0] = p.offsets[:-1]
    ds = _Write(files, plans)
    decoded = torch.utils.data.DataLoader(  # own generator: building leaves the trial's RNG untouched
        ds,
        batch_size=None,
        num_workers=workers,
        multiprocessing_context=worker_context(workers),
        generator=torch.Generator(),
    )
    report = progress or _metered(len(files))
    try:
        for n, done in enumerate(decoded, 1):
            if isinstance(done, str):  # a worker's BadImage, as its one line
                raise BadImage(done)
            for k, row, h, w in done:
                index[k][row, 1:] = (h, w)
            report(n, len(files))
    finally:
        ds.close()
    for p in plans:  # the workers' writes are in the page cache: on disk before the cache is renamed in
        fd = os.open(p.pixels, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return index


def _metered(total: int) -> Progress:
    """The default progress: this process's meter (the sweep's display, refit-best's and check's)."""
    step = meter.counter("cache build", total)
    return lambda done, _total: step(done)
