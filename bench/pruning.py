"""Benchmark (c): does pruning pay? Pruned vs unpruned sweeps on the built-in digits dataset.

For each repeat (sampler seed), the same study runs twice with the same sampler and seed: once without a
pruner, once with one. The **target** is the unpruned sweep's best value less ``--tol`` points. Per
repeat, each sweep's compute is counted, in trial order, until its first complete trial reaches the
target: epochs trained, and wall seconds from the start of its first trial. The figure is

    pruned sweep's compute to the target / unpruned sweep's own compute to the same target

The unpruned sweep reaches the target by construction (its best is within ``--tol`` of itself); the
pruned one is given the same epochs in all (the epochs its pruned trials free buy more trials), and a
repeat where it never reaches the target counts as "never" (an infinite ratio), not dropped. Once the
pruned sweep has reached the target or spent its epochs, its remaining trials are skipped untrained
(they cannot change the figure). The median over repeats comes with a bootstrap 95% interval: it covers
the sampler-seed variation of this benchmark, nothing wider. Also printed, labelled as such, the old
figure: the pruned compute to the target / the unpruned sweep's *total* compute, which flatters pruning
(the unpruned sweep usually reached the target well before its last trial).

    python bench/pruning.py            # 3 repeats, 12 trials x 6 epochs each
    python bench/pruning.py --quick    # 1 repeat, 6 trials x 3 epochs: checks that it runs
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SKIPPED = "bench_skipped"  # user attr of a pruned sweep's trial left untrained after the figure was settled


@dataclass(frozen=True)
class Sweep:
    """One sweep's trials in order: what each cost and its value if it completed (None: pruned)."""

    epochs: list[int]
    seconds: list[float]  # wall time since the previous trial ended (the first: its own duration)
    values: list[float | None]

    @property
    def best(self) -> float:
        return max((v for v in self.values if v is not None), default=-math.inf)


def to_reach(costs: Sequence[float], values: Sequence[float | None], target: float) -> float | None:
    """Compute spent, in trial order, until the first complete trial at or above ``target``; None: never."""
    spent = 0.0
    for cost, value in zip(costs, values, strict=True):
        spent += cost
        if value is not None and value >= target:
            return spent
    return None


def ratio(part: float | None, whole: float | None) -> float:
    """``part / whole``; infinite when ``part`` never happened."""
    return math.inf if part is None or whole is None else part / whole


def bootstrap_median(xs: Sequence[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the median over repeats ("never" = inf stays inf)."""
    a = np.asarray(xs, dtype=float)
    meds = np.sort(np.median(np.random.default_rng(seed).choice(a, (n, len(a))), axis=1))
    return float(meds[int(0.025 * n)]), float(meds[math.ceil(0.975 * n) - 1])


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "never" if x is None or math.isinf(x) else format(x, spec)


def summary(label: str, ratios: Sequence[float]) -> str:
    """``label: median M [lo, hi], reached in k/n repeats, above 1 in j; per repeat ...``."""
    lo, hi = bootstrap_median(ratios)
    reached, over = sum(not math.isinf(r) for r in ratios), sum(r > 1 for r in ratios)
    return (
        f"{label}: median {fmt(float(np.median(ratios)))} [{fmt(lo)}, {fmt(hi)}], reached in "
        f"{reached}/{len(ratios)} repeats, above 1 (never included) in {over}; per repeat "
        f"{', '.join(fmt(r) for r in ratios)}"
    )


def interval_note(n: int, covers: str = "the sampler-seed variation") -> str:
    return (
        f"[95% percentile-bootstrap interval of the median over the {n} repeats: {covers} of this "
        "benchmark only; 'never' counts as an infinite ratio]"
    )


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


def sweep(
    seed: int,
    trials: int,
    epochs: int,
    pruner: dict,
    workdir: Path,
    target: float | None = None,
    budget: int | None = None,
) -> Sweep:
    """Run one sweep of ``trials`` trials. With a ``target``, run until a complete trial reaches it or
    ``budget`` epochs are spent, whichever comes first (``trials`` is then only an upper bound)."""
    import optuna
    from optuna.trial import TrialState

    from sweeper.data import images as data
    from sweeper.store import tracking
    from sweeper.study import spec
    from sweeper.sweep import loop as sweep
    from sweeper.sweep import trial

    stem = f"{pruner['name']}-{seed}"
    s = spec.parse(study_dict(seed, epochs, pruner), workdir / f"{stem}.yaml")
    train = trial.make_objective(s, data.scan(s.data_root), tracking.NullTracker())

    def objective(t: optuna.Trial) -> float | list[float]:
        if target is not None and budget is not None:
            done = [u for u in t.study.get_trials(deepcopy=False) if u.state.is_finished()]
            spent = sum(len(u.intermediate_values) for u in done)
            hit = any(
                u.value is not None and u.value >= target for u in done if u.state == TrialState.COMPLETE
            )
            if hit or spent >= budget:
                t.set_user_attr(SKIPPED, True)
                raise optuna.TrialPruned()
        return train(t)

    st = sweep.run(s, trials, objective, f"sqlite:///{workdir / stem}.db")
    ran = sorted(
        (t for t in st.get_trials(deepcopy=False) if t.state.is_finished() and not t.user_attrs.get(SKIPPED)),
        key=lambda t: t.number,
    )
    ends = [t.datetime_complete.timestamp() for t in ran if t.datetime_complete]
    starts = [ran[0].datetime_start.timestamp() if ran and ran[0].datetime_start else 0.0, *ends[:-1]]
    return Sweep(
        epochs=[len(t.intermediate_values) for t in ran],
        seconds=[end - start for start, end in zip(starts, ends, strict=True)],
        values=[t.value if t.state == TrialState.COMPLETE else None for t in ran],
    )


def one_repeat(
    seed: int, trials: int, epochs: int, tol: float, pruner: dict, workdir: Path
) -> tuple[float, float, float]:
    """Both sweeps of one seed; the pruned/unpruned ratios to the target in epochs and in seconds, and the
    old figure (pruned epochs to the target / unpruned total epochs)."""
    plain = sweep(seed, trials, epochs, {"name": "none"}, workdir)
    target, budget = plain.best - tol / 100, sum(plain.epochs)
    # every trial trains >= 1 epoch, so `budget` trials always spend the budget
    cut = sweep(seed, budget, epochs, pruner, workdir, target, budget)
    own_e, need_e = to_reach(plain.epochs, plain.values, target), to_reach(cut.epochs, cut.values, target)
    own_s, need_s = to_reach(plain.seconds, plain.values, target), to_reach(cut.seconds, cut.values, target)
    by_epochs, by_seconds = ratio(need_e, own_e), ratio(need_s, own_s)
    print(
        f"seed {seed}: target {target:.4f} (unpruned best {plain.best:.4f} - {tol} pt); unpruned reached it "
        f"after {fmt(own_e, '.0f')} of {budget} epochs, {fmt(own_s, '.0f')}s; pruned after "
        f"{fmt(need_e, '.0f')} epochs, {fmt(need_s, '.0f')}s -> {fmt(by_epochs)} of the epochs, "
        f"{fmt(by_seconds)} of the seconds\n  trials (epochs/seconds, * = complete and on target):\n"
        f"    unpruned {describe(plain, target)}\n    pruned   {describe(cut, target)}",
        flush=True,
    )
    return by_epochs, by_seconds, ratio(need_e, budget)


def describe(sw: Sweep, target: float) -> str:
    marks = ["*" if v is not None and v >= target else "" for v in sw.values]
    return " ".join(f"{e}/{s:.0f}{m}" for e, s, m in zip(sw.epochs, sw.seconds, marks, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat of 6 trials x 3 epochs")
    ap.add_argument("--repeats", type=int, default=3, help="sampler seeds 0 .. repeats-1")
    ap.add_argument("--trials", type=int, default=12, help="trials of the unpruned sweep")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of a trial that is not pruned")
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
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-pruning-") as d:
        # one untimed trial first: the process's trial fork server (torch, timm imports) and the data
        # cache start once, and would otherwise fall on the first unpruned sweep's seconds alone
        sweep(args.repeats, 1, 1, {"name": "none"}, Path(d))
        rows = [
            one_repeat(seed, args.trials, args.epochs, args.tol, pruner, Path(d))
            for seed in range(args.repeats)
        ]
    print(
        f"\npruner {args.pruner}, unpruned {args.trials} trials x {args.epochs} epochs, "
        f"{args.repeats} repeats, {time.perf_counter() - t0:.0f}s"
    )
    print(f"pruned / unpruned compute to reach the unpruned best - {args.tol} pt, each sweep's own:")
    epochs, seconds, old = zip(*rows, strict=True)
    print(summary("  epochs", epochs))
    print(summary("  wall seconds", seconds))
    print(summary("  old figure, pruned epochs to target / unpruned TOTAL epochs (flatters)", old))
    print(interval_note(args.repeats))


if __name__ == "__main__":
    main()
