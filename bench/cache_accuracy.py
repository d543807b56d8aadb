"""Benchmark (e): does the decode-once cache's resolution change what augmentation does? Accuracy on digits.

The built-in digits (32 px images) trained quickstart-style (resnet10t from scratch, AdamW, RandomResizedCrop
at the default scale 0.08-1) at input 16, so the cache's size matters: ``cache_scale 0`` keeps the input
size (short side 16; issue 14 measured the eval resize, 18) and crops are cut from that copy;
``cache_scale 2`` keeps the 32 px originals, what a full decode gives (the default, from the crops, keeps
22). Same seeds for both; val accuracy of the best epoch.

    python bench/cache_accuracy.py             # seeds 0 1 2, 6 epochs
    python bench/cache_accuracy.py --quick     # seed 0, 2 epochs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 2.0])
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs = [0], 2

    import torch

    from sweeper.data import images as data
    from sweeper.study import spec
    from sweeper.train import fit as train

    torch.set_num_threads(2)
    ds = data.scan(data.materialize_builtin())
    fixed = {
        "backbone": "resnet10t",
        "img_size": 16,
        "epochs": args.epochs,
        "optimizer": "adamw",
        "lr_backbone": 3e-3,
        "lr_head": 1e-2,
        "warmup_epochs": 0.5,
        "num_workers": 0,
        "aug.hflip": False,
    }
    acc: dict[float, list[float]] = {s: [] for s in args.scales}
    for seed in args.seeds:
        for s in args.scales:
            t0 = time.perf_counter()
            r = train.run_trial(spec.build_config({**fixed, "seed": seed, "cache_scale": s}), ds)
            acc[s].append(r.best["val_acc"])
            print(
                f"seed {seed} cache_scale {s}: val_acc {r.best['val_acc']:.4f} "
                f"({time.perf_counter() - t0:.0f}s)"
            )
    for s, v in acc.items():
        print(
            f"cache_scale {s}: median val_acc {statistics.median(v):.4f}  "
            f"runs: {', '.join(f'{x:.4f}' for x in v)}"
        )


if __name__ == "__main__":
    main()
