"""Benchmark (a): the training data pipeline's images/s, sweeper's decode-once cache against a fair plain
pipeline, and the cache's build rate and size against the files.

A generated folder of 500x375 photo-like JPEGs (``bench/make_reference.py``: a third portrait, 10
classes, ``--images`` train and a tenth as many val). The cache is built exactly as ``run-study``
builds it (``loaders.Pipelines`` as ``fit`` calls it: training copies of train + val at the short side
the crops use, eval crops of val), timed against a bare parallel PIL decode of the same files with the
same workers, and its bytes printed beside the JPEG bytes. In one process, the build's own item
(decode, resize or eval crop, write) is timed against a bare decode of the same files: the most a
build with any number of workers can reach against the bare decode.

Four pipelines over the train images, every one through sweeper's ``loaders.loader`` (the same batch,
workers, prefetch, pinning and shuffling) and the same torchvision v2 train transform (RandomResizedCrop
224 + flip, then to float and normalize):

* ``plain``: ``torchvision.io.decode_jpeg`` of each file (libjpeg-turbo, straight to a uint8 tensor),
  then the whole transform on uint8: what a good engineer writes without a cache;
* ``sweeper``: the cache, then the whole transform (all on the CPU);
* ``plain-u8`` and ``sweeper-u8``: the uint8 part only (decode or cache, crop, flip), i.e. what the CPU
  must deliver when the float work runs on the GPU (``device_aug``).

Epochs run interleaved (A, B, C, D, A, ...) so load from other processes hits all alike; medians and
their ratios are printed.

    python bench/data_pipeline.py           # 1,000 train images, 3 rounds
    python bench/data_pipeline.py --quick   # 300 images, 2 rounds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class DecodeJpeg(torch.utils.data.Dataset):
    """The plain pipeline: ``torchvision.io.decode_jpeg`` of each file, then ``transform`` on uint8."""

    def __init__(self, files: tuple[Path, ...], labels: tuple[int, ...], transform: Callable) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        img = decode_jpeg(read_file(str(self.files[i])), mode=ImageReadMode.RGB)
        return self.transform(img), self.labels[i]


class DecodePil(torch.utils.data.Dataset):
    """A bare decode: each file through sweeper's PIL decoder (the build's yardstick), and with
    ``resize`` the training copy's resize too (the work the build cannot skip)."""

    def __init__(self, files: list[Path], resize: Callable | None = None) -> None:
        self.files, self.resize = files, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> int:
        from sweeper.data.tensors import load_image

        img = load_image(self.files[i])
        return img.shape[1] if self.resize is None else self.resize(img).shape[1]


def epoch(dl) -> float:
    """Images per second for one pass over the loader."""
    n, t0 = 0, time.perf_counter()
    for _, y in dl:
        n += len(y)
    return n / (time.perf_counter() - t0)


def bare_decode(files: list[Path], workers: int, resize: Callable | None = None) -> float:
    """Images/s of decoding every file once in ``workers`` forked processes (and resizing it)."""
    from sweeper.data.workers import worker_context

    dl = torch.utils.data.DataLoader(
        DecodePil(files, resize),
        batch_size=None,
        num_workers=workers,
        multiprocessing_context=worker_context(workers),
    )
    t0 = time.perf_counter()
    for _ in dl:
        pass
    return len(files) / (time.perf_counter() - t0)


def item_ceiling(files: list[Path], plans: list, rounds: int = 2) -> tuple[float, float, float]:
    """In this process, per image: a bare PIL decode (ms), the build's whole item (ms: decode, resize or eval
    crop, write; ``build._Write`` itself) and their ratio, the most a build with the same workers can reach
    against the bare decode before any cost of running in parallel (fastest of ``rounds`` passes)."""
    from sweeper.data import build
    from sweeper.data.tensors import load_image

    for p in plans:
        with open(p.pixels, "wb") as out:
            out.truncate(p.bytes)
    item = build._Write(files, plans)
    decode, whole = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for f in files:
            load_image(f)
        decode.append((time.perf_counter() - t0) / len(files) * 1e3)
        t0 = time.perf_counter()
        for i in range(len(files)):
            item[i]
        whole.append((time.perf_counter() - t0) / len(files) * 1e3)
    item.close()
    return min(decode), min(whole), min(decode) / min(whole)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 images, 2 rounds")
    ap.add_argument("--images", type=int, default=1000, help="train images (and a tenth as many val)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model", default="resnet50", help="timm model whose data config (size, crop) is used")
    args = ap.parse_args()
    if args.quick:
        args.images, args.rounds = 300, 2

    import timm
    from make_reference import make

    from sweeper.data import augment, build, cache, device_crop, loaders
    from sweeper.data import images as data_lib
    from sweeper.study import spec

    torch.set_num_threads(1)  # the main process only collates; decoding work is in the workers
    workers = loaders.cores() if args.workers is None else args.workers
    dcfg = timm.data.resolve_model_data_config(timm.create_model(args.model, pretrained=False))
    cfg = spec.build_config({"batch_size": args.batch, "num_workers": workers})
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-data-") as d:
        make(Path(d) / "ref", args.images, args.images // 10, 0, 10)
        data = data_lib.scan(Path(d) / "ref")
        files = sorted({*data.train.files, *data.val.files})
        shrink = cache.ShrinkShortSide(
            cache.train_short_side(dcfg["input_size"][-1], cfg.aug.rrc_scale, cfg.aug.rrc_ratio),
            augment.interpolation(dcfg),
        )
        speeds: dict[str, list[float]] = {"bare": [], "bare+resize": [], "build": []}
        for i in range(args.rounds):  # interleaved, each build into an empty data dir
            speeds["bare"].append(bare_decode(files, workers))
            speeds["bare+resize"].append(bare_decode(files, workers, shrink))
            os.environ["SWEEPER_DATA_DIR"] = str(Path(d) / f"sweeper-data-{i}")
            t0 = time.perf_counter()
            pipes = loaders.Pipelines(cfg, dcfg, cpu, data.train, data.val, evaluated=(data.val,))  # as fit
            speeds["build"].append(len(files) / (time.perf_counter() - t0))
        assert pipes.images is not None and pipes.eval_images is not None
        sizes = {f: build.upright_size(f) for f in files}
        here = Path(d) / "one-process"
        here.mkdir()
        plans = [
            build.plan(list(data.train.files), shrink, here / "train.u8", sizes),
            build.plan(list(data.val.files), augment.EvalCrop(dcfg, cfg.eval), here / "eval.u8", sizes),
        ]
        ms_decode, ms_item, ceiling = item_ceiling(files[:: max(1, len(files) // 300)], plans)  # val too
        folders = (pipes.images.folder, pipes.eval_images.folder)
        cache_mb = sum(f.stat().st_size for d_ in folders for f in d_.iterdir()) / 1e6
        jpeg_mb = sum(f.stat().st_size for f in files) / 1e6
        train_tf = pipes.train_tf
        host_tf, _ = augment.split_for_device(train_tf)  # the plain side's uint8 part: the float math after
        # sweeper's device_aug as a trial on a GPU runs it: the same cache, the workers draw each crop's box
        # and flips and send its pixels; the resize, flips and float math are the device's (not run here)
        on_device = loaders.Pipelines(
            dataclasses.replace(cfg, device_aug=True), dcfg, cpu, data.train, data.val, evaluated=(data.val,)
        )
        assert isinstance(on_device.train_tail, device_crop.DeviceCrop), on_device.train_tail
        tr = data.train
        dls = {
            "plain": loaders.loader(DecodeJpeg(tr.files, tr.labels, train_tf), cfg, True, cpu),
            "sweeper": loaders.loader(pipes.train(tr), cfg, True, cpu),
            "plain-u8": loaders.loader(DecodeJpeg(tr.files, tr.labels, host_tf), cfg, True, cpu),
            "sweeper-u8": loaders.loader(on_device.train(tr), cfg, True, cpu),
        }
        for dl in dls.values():  # warm-up: worker start, page cache
            epoch(dl)
        rates: dict[str, list[float]] = {k: [] for k in dls}
        for _ in range(args.rounds):
            for k, dl in dls.items():
                rates[k].append(epoch(dl))
        short = pipes.images[tr.files[1]].shape[1:]  # files[0] is a portrait
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"{len(tr)} train + {len(data.val)} val JPEGs 500x375 ({jpeg_mb:.0f} MB), {args.model} data config "
        f"(input {dcfg['input_size'][-1]}, {dcfg.get('interpolation')}), batch {args.batch}, {workers} "
        f"workers, {os.cpu_count()} CPUs, {args.rounds} interleaved rounds"
    )
    built = {k: statistics.median(v) for k, v in speeds.items()}
    print(
        f"cache build as run-study builds it: median {built['build']:.0f} images/s vs a bare parallel PIL "
        f"decode {built['bare']:.0f}: {built['build'] / built['bare']:.2f}x (target >= 0.9x); "
        f"vs a bare decode + the same resize {built['bare+resize']:.0f}: "
        f"{built['build'] / built['bare+resize']:.2f}x"
    )
    for k, v in speeds.items():
        print(f"  {k:<11} rounds: {', '.join(f'{x:.0f}' for x in v)} images/s")
    print(
        f"  one process, per image (every n-th file, about 300): bare decode {ms_decode:.2f} ms, the build's "
        f"item {ms_item:.2f} ms (decode, resize or crop, write): at most {ceiling:.2f}x of the bare decode"
    )
    print(
        f"cache size {cache_mb:.0f} MB = {cache_mb / jpeg_mb:.1f}x the JPEG bytes (target <= ~3x); "
        f"training copies {tuple(short)} for a landscape photo"
    )
    for k, v in rates.items():
        print(f"  {k:<10} median {med[k]:7.1f} images/s   rounds: {', '.join(f'{x:.0f}' for x in v)}")
    print(f"all-CPU:     sweeper / plain       = {med['sweeper'] / med['plain']:.2f}x")
    print(f"uint8 share: sweeper-u8 / plain-u8 = {med['sweeper-u8'] / med['plain-u8']:.2f}x (target >= 5x)")
    print(f"device_aug vs the plain all-CPU:  sweeper-u8 / plain = {med['sweeper-u8'] / med['plain']:.2f}x")


if __name__ == "__main__":
    main()
