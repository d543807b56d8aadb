"""Benchmark (a): training data pipeline images/s, sweeper's decode-once cache vs plain decoding.

Generated JPEGs of realistic size (500x375 and 375x500 by default) in 10 class folders. Three
pipelines over the same files, the same DataLoader settings (batch, workers = the same cores) and
the same torchvision v2 train transform (RandomResizedCrop 224, flip, to float, normalize):

* ``sweeper``: sweeper's loader over its memory-mapped cache of decoded, pre-resized images;
* ``sweeper-u8``: the same with ``device_aug``: workers send uint8 batches, conversion and normalize
  run batched after the transfer (on a GPU in real use; here on the CPU, in the main process);
* ``cpu-part`` and ``plain-cpu-part``: the uint8 part only (cache or decode, crop, flip), i.e. what the
  CPU must deliver when conversion and normalize run on the accelerator (sweeper's ``device_aug``,
  timm's GPU prefetcher);
* ``plain``: ``torchvision.datasets.ImageFolder`` + PIL decoding, then the identical transform;
* ``plain-pil``: ImageFolder + PIL with the crop/flip done by PIL before tensor conversion, the way
  most hand-written pipelines do it (a stronger baseline: PIL resizes the crop straight to 224).

Epochs of the pipelines run interleaved (A, B, C, A, B, C, ...) so load from other processes hits all
alike; the medians and their ratios are printed.

    python bench/data_pipeline.py           # 1000 images, 5 rounds
    python bench/data_pipeline.py --quick   # 200 images, 2 rounds

``--cache-scales 0,1.5,2,inf`` instead measures sweeper's pipeline alone at each cache size (short side
kept = max(eval resize, scale x input size), originals never enlarged; 0 = the eval resize, inf = the
full decode), with the build time and disk size of each cache: the cost of full-fidelity crops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sweeper.data import tensors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_jpegs(root: Path, n: int, size: tuple[int, int], classes: int = 10, seed: int = 0) -> Path:
    """Photo-like JPEGs: smooth color fields, a few shapes and sensor noise (not pure noise, which
    compresses and decodes unlike photos)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        c = i % classes
        ww, hh = (w, h) if i % 3 else (h, w)  # a third are portrait
        y, x = (yy, xx) if i % 3 else np.mgrid[0:hh, 0:ww].astype(np.float32)
        base = np.stack(
            [np.sin(x / (20 + 7 * k + c) + rng.uniform(0, 6)) * np.cos(y / (30 + 5 * k)) for k in range(3)],
            -1,
        )
        img = (base * 80 + 128 + rng.normal(0, 8, (hh, ww, 3))).clip(0, 255).astype(np.uint8)
        for _ in range(4):
            x0, y0 = rng.integers(0, ww - 40), rng.integers(0, hh - 40)
            img[y0 : y0 + rng.integers(20, 120), x0 : x0 + rng.integers(20, 120)] = rng.integers(0, 255, 3)
        out = root / f"class_{c:02d}" / f"img_{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out, quality=90)
    return root


def epoch(dl) -> float:
    """Images per second for one pass over the loader."""
    n, t0 = 0, time.perf_counter()
    for x, _ in dl:
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 images, 2 rounds")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model", default="resnet50", help="timm model whose data config (size, crop) is used")
    ap.add_argument(
        "--cache-scales", default=None, help="e.g. 0,1.5,2,inf: sweeper's pipeline per cache size"
    )
    args = ap.parse_args()
    if args.quick:
        args.images, args.rounds = 200, 2
    if args.cache_scales:
        cache_scales(args, [float(x) for x in args.cache_scales.split(",")])
        return

    import timm
    import torch
    import torchvision
    from torchvision.transforms import v2 as T

    from sweeper.data import augment, cache, loaders
    from sweeper.study import spec

    torch.set_num_threads(1)  # the main process only collates; decoding work is in the workers
    workers = loaders.cores() if args.workers is None else args.workers
    dcfg = timm.data.resolve_model_data_config(timm.create_model(args.model, pretrained=False))
    aug = spec.AugConfig()  # the default: RandomResizedCrop + horizontal flip
    train_tf = augment.train_transform(aug, dcfg)
    eval_tf = augment.eval_transform(dcfg)
    cfg = spec.build_config({"batch_size": args.batch, "num_workers": workers})
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-data-") as d:
        os.environ["SWEEPER_DATA_DIR"] = str(Path(d) / "sweeper-data")
        root = make_jpegs(Path(d) / "train", args.images, (args.width, args.height))
        plain_ds = torchvision.datasets.ImageFolder(str(root), transform=T.Compose([T.ToImage(), train_tf]))
        files = tuple(Path(p) for p, _ in plain_ds.samples)
        labels = tuple(y for _, y in plain_ds.samples)
        t0 = time.perf_counter()
        images = cache.open_cache(files, eval_tf.transforms[0], workers=workers)
        build = time.perf_counter() - t0
        assert images is not None
        cache_mb = sum(f.stat().st_size for f in images.folder.iterdir()) / 1e6
        jpeg_mb = sum(f.stat().st_size for f in files) / 1e6
        cpu = torch.device("cpu")
        sweeper_dl = loaders.loader(tensors.ImageDataset(files, labels, train_tf, images), cfg, True, cpu)
        host_tf, tail = augment.split_for_device(train_tf)  # device_aug: float math after the transfer
        uint8_dl = loaders.loader(
            tensors.ImageDataset(files, labels, host_tf, images), cfg, True, cpu, tail=tail
        )
        size = dcfg["input_size"][-1]
        interp = augment._interp(dcfg.get("interpolation", "bilinear"))
        pil_ops = [
            T.RandomResizedCrop(size, scale=aug.rrc_scale, ratio=aug.rrc_ratio, interpolation=interp),
            T.RandomHorizontalFlip(aug.hflip_p),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(dcfg["mean"], dcfg["std"]),
        ]
        pil_ds = torchvision.datasets.ImageFolder(str(root), transform=T.Compose(pil_ops))

        def plain_loader(ds):
            return torch.utils.data.DataLoader(
                ds,
                batch_size=args.batch,
                shuffle=True,
                drop_last=True,
                num_workers=workers,
                persistent_workers=workers > 0,
            )

        host_only = loaders.loader(tensors.ImageDataset(files, labels, host_tf, images), cfg, True, cpu)
        plain_host = torchvision.datasets.ImageFolder(
            str(root), transform=T.Compose([T.ToImage(), *host_tf.transforms])
        )
        loaders = {
            "sweeper": sweeper_dl,
            "sweeper-u8": uint8_dl,
            "plain": plain_loader(plain_ds),
            "plain-pil": plain_loader(pil_ds),
            "cpu-part": host_only,
            "plain-cpu-part": plain_loader(plain_host),
        }
        for dl in loaders.values():  # warm-up: worker start, page cache
            epoch(dl)
        rates: dict[str, list[float]] = {k: [] for k in loaders}
        for _ in range(args.rounds):
            for k, dl in loaders.items():
                rates[k].append(epoch(dl))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"{args.images} JPEGs {args.width}x{args.height} ({jpeg_mb:.0f} MB), {args.model} data config "
        f"(input {size}, eval resize {eval_tf.transforms[0].size}, {dcfg.get('interpolation')}), "
        f"batch {args.batch}, {workers} workers, {os.cpu_count()} CPUs, {args.rounds} interleaved rounds"
    )
    print(
        f"cache build (once per sweep): {build:.1f}s, {cache_mb:.0f} MB "
        f"= {build / (args.images / med['plain']):.2f} plain epochs"
    )
    for k, v in rates.items():
        print(f"  {k:<10} median {med[k]:7.1f} images/s   rounds: {', '.join(f'{x:.0f}' for x in v)}")
    print(f"ratio sweeper / plain     = {med['sweeper'] / med['plain']:.2f}x (goal >= 3x)")
    print(f"ratio sweeper / plain-pil = {med['sweeper'] / med['plain-pil']:.2f}x")
    print(
        f"ratio sweeper-u8 / plain  = {med['sweeper-u8'] / med['plain']:.2f}x (device_aug: uint8 batches, "
        "float math after the transfer, here in the main process on the CPU)"
    )
    ratio = med["cpu-part"] / med["plain-cpu-part"]
    print(
        f"ratio cpu-part / plain-cpu-part = {ratio:.2f}x (uint8 batches: the CPU's share when conversion "
        "and normalize run on the accelerator, for both pipelines)"
    )


def cache_scales(args: argparse.Namespace, scales: list[float]) -> None:
    """sweeper's train pipeline (RandomResizedCrop + flip + normalize) over caches of each size."""
    import math

    import timm
    import torch

    from sweeper.data import augment, cache, loaders
    from sweeper.study import spec

    torch.set_num_threads(1)
    workers = loaders.cores() if args.workers is None else args.workers
    dcfg = timm.data.resolve_model_data_config(timm.create_model(args.model, pretrained=False))
    size = dcfg["input_size"][-1]
    eval_resize = math.floor(size / dcfg["crop_pct"])
    train_tf = augment.train_transform(spec.AugConfig(), dcfg)
    cfg = spec.build_config({"batch_size": args.batch, "num_workers": workers})
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-data-") as d:
        os.environ["SWEEPER_DATA_DIR"] = str(Path(d) / "sweeper-data")
        root = make_jpegs(Path(d) / "train", args.images, (args.width, args.height))
        files = tuple(sorted(root.rglob("*.jpg")))
        labels = tuple(int(f.parent.name[-2:]) for f in files)
        dls, info = {}, {}
        for s in scales:
            short = 10**9 if math.isinf(s) else cache.cached_short_side(eval_resize, size, s)
            shrink = cache.ShrinkShortSide(short, augment.interpolation(dcfg))
            t0 = time.perf_counter()
            images = cache.open_cache(files, shrink, workers=workers)
            assert images is not None
            mb = sum(f.stat().st_size for f in images.folder.iterdir()) / 1e6
            info[s] = (min(short, args.width, args.height), time.perf_counter() - t0, mb)
            dls[s] = loaders.loader(
                tensors.ImageDataset(files, labels, train_tf, images), cfg, True, torch.device("cpu")
            )
        for dl in dls.values():
            epoch(dl)
        rates: dict[float, list[float]] = {s: [] for s in scales}
        for _ in range(args.rounds):
            for s, dl in dls.items():
                rates[s].append(epoch(dl))
    print(
        f"{args.images} JPEGs {args.width}x{args.height}, {args.model} (input {size}, eval resize "
        f"{eval_resize}), batch {args.batch}, {workers} workers, {args.rounds} interleaved rounds"
    )
    for s in scales:
        short, build, mb = info[s]
        med = statistics.median(rates[s])
        print(
            f"  cache_scale {s:<4} short side {short:4d}: build {build:5.1f}s, {mb:6.0f} MB, "
            f"median {med:6.1f} images/s   rounds: {', '.join(f'{x:.0f}' for x in rates[s])}"
        )


if __name__ == "__main__":
    main()
