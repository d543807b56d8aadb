"""A generated image folder the size of the reference data: photo-like 500x375 JPEGs (a third portrait),
``ROOT/train/<class>/``, ``ROOT/val/<class>/`` and an unlabelled ``ROOT/test/``.

The reference set is 18,900 train / 2,100 val / 2,300 test photos in 100 classes (about 1.1 GB); the
defaults make a tenth of it. Content is smooth color fields, a few flat shapes and sensor noise: it
compresses and decodes like a photo (pure noise would not), about 50 kB a file at quality 90.

    python bench/make_reference.py /tmp/ref                                # 1,890 / 210 / 230, 100 classes
    python bench/make_reference.py /tmp/ref --train 18900 --val 2100 --test 2300   # the full size
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def photo(i: int, size: tuple[int, int], cls: int, seed: int = 0) -> np.ndarray:
    """Image ``i``'s pixels, ``H x W x 3`` uint8: landscape ``size`` (w, h), every third one portrait."""
    rng = np.random.default_rng([seed, i])
    w, h = size if i % 3 else size[::-1]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    base = np.stack(
        [np.sin(x / (20 + 7 * k + cls % 17) + phase[k]) * np.cos(y / (30 + 5 * k)) for k in range(3)], -1
    )
    img = (base * 80 + 128 + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(4):
        x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
        img[y0 : y0 + rng.integers(20, 120), x0 : x0 + rng.integers(20, 120)] = rng.integers(0, 255, 3)
    return img


def _write(job: tuple[Path, int, int, tuple[int, int]]) -> int:
    out, i, cls, size = job
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(i, size, cls)).save(out, quality=90)
    return out.stat().st_size


def make(
    root: Path,
    train: int,
    val: int,
    test: int,
    classes: int,
    size: tuple[int, int] = (500, 375),
    workers: int | None = None,
) -> int:
    """Write the folder (files already there are kept); returns the bytes of JPEG written."""
    jobs: list[tuple[Path, int, int, tuple[int, int]]] = []
    i = 0
    for split, n in (("train", train), ("val", val)):
        for k in range(n):
            cls = k % classes
            jobs.append((root / split / f"class_{cls:03d}" / f"{split}_{k:06d}.jpg", i, cls, size))
            i += 1
    jobs += [(root / "test" / f"test_{k:06d}.jpg", i + k, k % classes, size) for k in range(test)]
    todo = [j for j in jobs if not j[0].exists()]
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        return sum(pool.map(_write, todo, chunksize=16))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--train", type=int, default=1890)
    ap.add_argument("--val", type=int, default=210)
    ap.add_argument("--test", type=int, default=230)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    args = ap.parse_args()
    written = make(args.root, args.train, args.val, args.test, args.classes, (args.width, args.height))
    counts = f"{args.train} train / {args.val} val / {args.test} test"
    print(f"{args.root}: {counts}, {written / 1e6:.0f} MB written")


if __name__ == "__main__":
    main()
