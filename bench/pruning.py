"""Benchmark (c): does pruning pay? Pruned vs unpruned sweeps on the built-in digits dataset.

For each repeat (sampler seed), the same study runs twice with the same sampler, seed and trial count:
once without a pruner, once with one. Compute is counted in epochs trained. The figure of merit is the
compute the pruned sweep spends until one of its completed trials is within ``--tol`` points of the
unpruned sweep's best, divided by the unpruned sweep's total compute. Goal: <= 1/3.

    python bench/pruning.py            # 3 repeats, 12 trials x 6 epochs each
    python bench/pruning.py --quick    # 1 repeat, 6 trials x 3 epochs: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def study_dict(seed: int, epochs: int, pruner: dict) -> dict:
    return {
        "name": f"bench-pruning-{seed}",
        "data": {"root": "builtin:digits"},
        "objective": {"metric": "val_acc", "direction": "maximize"},
        "epochs": epochs,
        "sampler": {"name": "tpe", "seed": seed, "n_startup_trials": 4},
        "pruner": pruner,
        "fixed": {
            "backbone": "test_resnet",
            "img_size": 16,
            "num_workers": 0,
            "batch_size": 128,
            "warmup_epochs": 0.5,
            "aug": {"rrc": False, "hflip": False},
        },
        "space": {
            "lr_backbone": {"float": [1.0e-4, 3.0e-2], "log": True},
            "lr_head": {"float": [1.0e-4, 3.0e-2], "log": True},
            "weight_decay": {"float": [1.0e-4, 0.3], "log": True},
            "label_smoothing": {"float": [0.0, 0.2]},
        },
    }


def sweep(seed: int, trials: int, epochs: int, pruner: dict, workdir: Path) -> list[tuple[int, float | None]]:
    """Run one sweep; return (epochs trained, value if complete) per trial in trial order."""
    from optuna.trial import TrialState

    from sweeper.data import images as data
    from sweeper.store import tracking
    from sweeper.study import spec
    from sweeper.sweep import loop as sweep
    from sweeper.sweep import trial

    stem = f"{pruner['name']}-{seed}"
    s = spec.parse(study_dict(seed, epochs, pruner), workdir / f"{stem}.yaml")
    ds = data.scan(s.data_root)
    storage = f"sqlite:///{workdir / stem}.db"
    st = sweep.run(s, trials, trial.make_objective(s, ds, tracking.NullTracker()), storage)
    out = []
    for t in sorted(st.get_trials(deepcopy=False), key=lambda t: t.number):
        done = t.state == TrialState.COMPLETE
        out.append((len(t.intermediate_values), t.value if done else None))
    return out


def compute_to_reach(trials: list[tuple[int, float | None]], target: float) -> int | None:
    spent = 0
    for epochs, value in trials:
        spent += epochs
        if value is not None and value >= target:
            return spent
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat of 6 trials x 3 epochs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--tol", type=float, default=0.5, help="points of accuracy (0.5 = 0.005)")
    ap.add_argument(
        "--pruner", default="successive_halving", choices=["successive_halving", "hyperband", "median"]
    )
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.trials, args.epochs = 1, 6, 3
    pruner = {
        "successive_halving": {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3},
        "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
        "median": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
    }[args.pruner]
    os.environ.setdefault("SWEEPER_DATA_DIR", str(Path(tempfile.gettempdir()) / "sweeper-bench-data"))
    ratios = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-pruning-") as d:
        for r in range(args.repeats):
            seed = r
            unpruned = sweep(seed, args.trials, args.epochs, {"name": "none"}, Path(d))
            pruned = sweep(seed, args.trials, args.epochs, pruner, Path(d))
            best = max(v for _, v in unpruned if v is not None)
            target = best - args.tol / 100
            total = sum(e for e, _ in unpruned)
            own = compute_to_reach(unpruned, target)
            need = compute_to_reach(pruned, target)
            pbest = max((v for _, v in pruned if v is not None), default=float("nan"))
            ratio = need / total if need is not None else float("inf")
            ratios.append(ratio)
            print(
                f"seed {seed}: unpruned best {best:.4f} ({total} epochs; first within {args.tol} pt after "
                f"{own}); pruned best {pbest:.4f} ({sum(e for e, _ in pruned)} epochs in all, "
                f"{sum(v is None for _, v in pruned)}/{args.trials} pruned); pruned reached "
                f">= {target:.4f} after {need} epochs -> {ratio:.3f} of the unpruned compute",
                flush=True,
            )
    print(
        f"\npruner {args.pruner}, {args.trials} trials x {args.epochs} epochs, {args.repeats} repeats, "
        f"{time.perf_counter() - t0:.0f}s"
    )
    print(
        f"compute to reach within {args.tol} pt of the unpruned best, pruned / unpruned: "
        f"median {statistics.median(ratios):.3f}, per seed {', '.join(f'{x:.3f}' for x in ratios)} "
        f"(goal <= 0.333)"
    )


if __name__ == "__main__":
    main()
