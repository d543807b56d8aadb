"""Benchmark (d), GPU: sweeper's train step images/s vs timm's benchmark script, and real vs synthetic data.

For each model, at the same batch size and precision (bf16 autocast, channels_last as sweeper decides):

* ``synthetic``: sweeper's model setup (``loaders.setup_model``), optimizer and autocast, stepping on one
  batch that stays on the GPU: the step's ceiling;
* ``real``: the same step fed by sweeper's loader (decoded-image cache, workers from the cores,
  pinned non-blocking copies, ``device_aug`` with the crop resized on the GPU: ``loaders.Pipelines`` as
  a trial builds them) over generated JPEGs: ``real / synthetic`` is
  1 - data stall (goal >= 0.9);
* ``timm``: timm's own ``benchmark.py --bench train`` on the same model and batch, when its path is
  given (it ships with timm's repository, not its wheel): ``synthetic / timm`` (goal >= 0.95).

The phases run interleaved (synthetic, real, timm, synthetic, ...), medians reported.

    python bench/gpu_train.py --timm-benchmark ~/pytorch-image-models/benchmark.py
    python bench/gpu_train.py --quick            # resnet50 only, fewer steps
    python bench/gpu_train.py --device cpu --models test_resnet --batch 8 --steps 3 --quick  # smoke test
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("resnet50", "resnext50_32x4d", "resnext101_32x8d")


def step_fn(model, optimizer, device):
    """One optimizer step of sweeper's training loop (hard labels, bf16 autocast on CUDA)."""
    import torch
    import torch.nn.functional as F

    from sweeper.data import loaders

    def step(x, y) -> None:
        optimizer.zero_grad(set_to_none=True)
        with loaders.autocast(device):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, sync


def images_per_s(step, sync, batches, steps: int, warm: int = 3) -> float:
    it = iter(batches)
    for _ in range(warm):
        step(*next(it))
    sync()
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        n += len(x)
    sync()
    return n / (time.perf_counter() - t0)


def forever(dl):
    while True:
        yield from dl


def timm_bench(path: str, model: str, batch: int, steps: int, extra: list[str]) -> float:
    with tempfile.NamedTemporaryFile(suffix=".csv") as f:
        subprocess.run(
            [
                sys.executable,
                path,
                "--bench",
                "train",
                "--model",
                model,
                "-b",
                str(batch),
                "--num-bench-iter",
                str(steps),
                "--results-file",
                f.name,
                *extra,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(f.name) as rows:
            row = next(csv.DictReader(rows))
        return float(next(v for k, v in row.items() if k.endswith("samples_per_sec")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="first model only, 1 round")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=4096, help="generated JPEGs for the real-data phase")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timm-benchmark", default=None, help="path to timm's benchmark.py")
    ap.add_argument(
        "--timm-args",
        default="--amp --amp-dtype bfloat16 --channels-last",
        help="precision flags for timm's script, matching sweeper's bf16 autocast",
    )
    args = ap.parse_args()
    if args.quick:
        args.models, args.rounds = args.models[:1], 1

    import torch
    from make_reference import make

    from sweeper.data import images as data_lib
    from sweeper.data import loaders
    from sweeper.study import spec
    from sweeper.train import model as model_lib

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-gpu-") as d:
        os.environ["SWEEPER_DATA_DIR"] = str(Path(d) / "sweeper-data")
        classes = min(100, args.images)
        make(Path(d) / "ref", args.images, classes, 0, classes)  # scan wants val; only train is read
        split = data_lib.scan(Path(d) / "ref").train
        for name in args.models:
            cfg = spec.build_config({"backbone": name, "batch_size": args.batch, "device_aug": True})
            torch.manual_seed(0)
            model = model_lib.create(cfg, num_classes=classes)
            dcfg = model_lib.data_config(model, None)
            loaders.setup_model(model, cfg, device)
            model.train()
            step, sync = step_fn(model, model_lib.create_optimizer(model, cfg), device)
            pipes = loaders.Pipelines(cfg, dcfg, device, split)  # as a trial builds them: cache, device_aug
            real = loaders.loader(pipes.train(split), cfg, True, device, tail=pipes.train_tail)
            x, y = next(iter(real))
            synthetic = [(x, y)] * (args.steps + 10)
            rates: dict[str, list[float]] = {"synthetic": [], "real": [], "timm": []}
            for _ in range(args.rounds):
                rates["synthetic"].append(images_per_s(step, sync, synthetic, args.steps))
                rates["real"].append(images_per_s(step, sync, forever(real), args.steps))
                if args.timm_benchmark:
                    rates["timm"].append(
                        timm_bench(args.timm_benchmark, name, args.batch, args.steps, args.timm_args.split())
                    )
            med = {k: statistics.median(v) for k, v in rates.items() if v}
            line = (
                f"{name}: batch {args.batch}, channels_last {loaders.use_channels_last(cfg, device)}, "
                f"synthetic {med['synthetic']:.0f} img/s, real {med['real']:.0f} img/s "
                f"-> real/synthetic {med['real'] / med['synthetic']:.3f} (goal >= 0.9)"
            )
            if "timm" in med:
                ratio = med["synthetic"] / med["timm"]
                line += f"; timm {med['timm']:.0f} img/s -> sweeper/timm {ratio:.3f} (goal >= 0.95)"
            print(line, flush=True)
            del model, real
    print(
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else device}, "
        f"{loaders.cores()} cores, torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
