"""Pruning on SIMULATED learning curves of realistic length: the shipped studies' pruners, tuned here.

Real 15-20 epoch trials are too slow on a 2-core CPU to run enough sweeps, so this benchmark labels its
figures SIMULATED. Each trial is a fine-tuning run reduced to its learning curve: the final accuracy is
a smooth function of the backbone and head learning rates and the freeze depth (a ridge, as LR sweeps
show), plus seed noise; the curve rises with a rate that depends on the learning rate (small LRs start
slowly, and some of them end high, so curves cross), with epoch-to-epoch noise. The sampler and pruner
are the study file's own, built by sweeper's ``build_sampler``/``build_pruner``, and each trial reports
per epoch and obeys ``should_prune`` as a real trial does.

For each repeat the same sampler seed runs two sweeps side by side: unpruned (pruner none) and pruned
(the study's pruner). Compute = epochs trained. The figure: epochs the pruned sweep spends until one of
its complete trials is within ``--tol`` points of the unpruned best, divided by the unpruned sweep's
epochs. Goal: median <= 1/3.

    python bench/pruning_sim.py --study lr-freeze        # 7 repeats, 40 trials of the study's epochs
    python bench/pruning_sim.py --study lr-freeze --pruner '{"name": "median"}'   # try another pruner
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from sweeper.study import spec as spec_lib
from sweeper.study.dims import Dim  # noqa: E402
from sweeper.sweep import loop as sweep

sys.path.insert(0, str(Path(__file__).parent))
from pruning import compute_to_reach as needed  # noqa: E402  # the same measure as the real-data bench

SPACE = {
    "lr_backbone": Dim("float", low=1e-6, high=1e-3, log=True),
    "lr_head": Dim("float", low=1e-4, high=3e-2, log=True),
    "freeze_depth": Dim("int", low=0, high=4),
}


def curve(p: dict[str, float], epochs: int, rng: np.random.Generator) -> list[float]:
    """A simulated learning curve: its final value peaks on an LR ridge; small LRs rise slowly."""
    lb, lh = math.log10(p["lr_backbone"]), math.log10(p["lr_head"])
    final = 0.90 - 0.08 * (lb + 4.2) ** 2 - 0.05 * (lh + 2.6) ** 2 - 0.012 * abs(p["freeze_depth"] - 1)
    final = max(0.05, final + rng.normal(0, 0.003))
    tau = 1.0 + 2.5 * max(0.0, -4.0 - lb) + 0.8 * max(0.0, -3.0 - lh)  # slow starters: small LRs
    out = []
    for e in range(1, epochs + 1):
        out.append(final * (1 - math.exp(-e / tau)) + 0.05 * math.exp(-e / tau) + rng.normal(0, 0.002))
    return out


def sweep_once(spec: spec_lib.Study, seed: int, trials: int, pruned: bool) -> list[tuple[int, float | None]]:
    """(epochs trained, value if complete) per trial, in trial order. The pruned sweep runs until it has
    spent what the unpruned one did (``trials`` x epochs): the compute pruning frees buys more trials."""
    s = dataclasses.replace(spec, sampler={**spec.sampler, "seed": seed}, space=SPACE)
    if not pruned:
        s = dataclasses.replace(s, pruner={"name": "none"})
    sampler, pruner = sweep.build_sampler(s), sweep.build_pruner(s)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    rng = np.random.default_rng(seed)
    out: list[tuple[int, float | None]] = []

    def objective(trial: optuna.Trial) -> float:
        from sweeper.study import space as space_lib

        c = curve(space_lib.suggest(trial, s.space), s.epochs, rng)
        for e, v in enumerate(c, 1):
            trial.report(v, e)
            if trial.should_prune():
                out.append((e, None))
                raise optuna.TrialPruned()
        out.append((s.epochs, max(c)))
        return max(c)

    budget = trials * s.epochs
    while sum(e for e, _ in out) < budget:
        study.optimize(objective, n_trials=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="lr-freeze", help="a study name or file: its epochs, sampler, pruner")
    ap.add_argument("--pruner", help="JSON pruner section to try instead of the study's")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--tol", type=float, default=0.5, help="points of accuracy (0.5 = 0.005)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = spec_lib.load(args.study)
    if args.pruner:
        spec = dataclasses.replace(spec, pruner=json.loads(args.pruner))
    t0, ratios = time.perf_counter(), []
    for seed in range(args.repeats):
        plain = sweep_once(spec, seed, args.trials, pruned=False)
        cut = sweep_once(spec, seed, args.trials, pruned=True)
        best = max(v for _, v in plain if v is not None)
        total = sum(e for e, _ in plain)
        need, own = needed(cut, best - args.tol / 100), needed(plain, best - args.tol / 100)
        ratio = need / total if need is not None else math.inf
        ratios.append(ratio)
        spent, pruned = sum(e for e, _ in cut), sum(v is None for _, v in cut)
        print(
            f"seed {seed}: unpruned best {best:.4f} ({total} epochs, within {args.tol} pt after {own}); "
            f"pruned: {spent} epochs, {pruned}/{len(cut)} trials pruned, within {args.tol} pt after "
            f"{need} epochs -> {ratio:.3f}"
        )
    print(
        f"\nSIMULATED learning curves; study {spec.name}: sampler {spec.sampler}, pruner {spec.pruner}, "
        f"{args.trials} trials x {spec.epochs} epochs, {args.repeats} repeats, "
        f"{time.perf_counter() - t0:.0f}s"
    )
    print(
        f"compute to come within {args.tol} pt of the unpruned best, pruned / unpruned: median "
        f"{statistics.median(ratios):.3f} (goal <= 0.333); per seed {', '.join(f'{r:.3f}' for r in ratios)}"
    )


if __name__ == "__main__":
    main()
