"""Pruning on SIMULATED learning curves of realistic length: the shipped studies' pruners, tuned here.

Real 15-20 epoch trials are too slow on a 2-core CPU to run enough sweeps, so this benchmark labels its
figures SIMULATED. Each trial is a fine-tuning run reduced to its learning curve: the final accuracy is
a smooth function of the backbone and head learning rates and the freeze depth (a ridge, as LR sweeps
show), plus seed noise; the curve rises with a rate that depends on the learning rate (small LRs start
slowly, and some of them end high, so curves cross), with epoch-to-epoch noise. The sampler and pruner
are the study file's own, built by sweeper's ``build_sampler``/``build_pruner``, and each trial reports
per epoch and obeys ``should_prune`` as a real trial does.

For each repeat the same sampler seed runs two sweeps side by side: unpruned (pruner none) and pruned
(the study's pruner), given the same epochs in all. Compute = epochs trained. The target is the unpruned
sweep's best less ``--tol`` points; the figure is the epochs the pruned sweep spends until one of its
complete trials reaches the target, divided by the epochs the unpruned sweep itself spent until it first
did (the measure of ``bench/pruning.py``; a pruned sweep that never gets there counts as "never"). The
median comes with a bootstrap 95% interval over repeats: it covers the seed variation of this simulation
(sampler and curve noise), nothing wider. The old figure, divided by the unpruned sweep's *total* epochs,
is printed too, labelled: it flatters pruning.

    python bench/pruning_sim.py --study lr-freeze        # 50 repeats, 40 trials of the study's epochs
    python bench/pruning_sim.py --study lr-freeze --pruner '{"name": "median"}'   # try another pruner
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
from pruning import fmt, interval_note, ratio, summary, to_reach  # noqa: E402  # the real-data bench's measure

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
    ap.add_argument("--repeats", type=int, default=50, help="seeds 0 .. repeats-1 (sampler and curve noise)")
    ap.add_argument("--trials", type=int, default=40, help="trials of the unpruned sweep")
    ap.add_argument("--tol", type=float, default=0.5, help="points of accuracy (0.5 = 0.005)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = spec_lib.load(args.study)
    if args.pruner:
        spec = dataclasses.replace(spec, pruner=json.loads(args.pruner))
    t0, ratios, old = time.perf_counter(), [], []
    for seed in range(args.repeats):
        plain = sweep_once(spec, seed, args.trials, pruned=False)
        cut = sweep_once(spec, seed, args.trials, pruned=True)
        best = max(v for _, v in plain if v is not None)
        target, total = best - args.tol / 100, sum(e for e, _ in plain)
        own = to_reach([e for e, _ in plain], [v for _, v in plain], target)
        need = to_reach([e for e, _ in cut], [v for _, v in cut], target)
        ratios.append(ratio(need, own))
        old.append(ratio(need, total))
        spent, pruned = sum(e for e, _ in cut), sum(v is None for _, v in cut)
        print(
            f"seed {seed}: target {target:.4f}; unpruned reached it after {fmt(own, '.0f')} of {total} "
            f"epochs; pruned ({spent} epochs, {pruned}/{len(cut)} trials pruned) after {fmt(need, '.0f')} "
            f"-> {fmt(ratios[-1])} (old figure {fmt(old[-1])})"
        )
    print(
        f"\nSIMULATED learning curves; study {spec.name}: sampler {spec.sampler}, pruner {spec.pruner}, "
        f"unpruned {args.trials} trials x {spec.epochs} epochs, {args.repeats} repeats, "
        f"{time.perf_counter() - t0:.0f}s"
    )
    print(f"pruned / unpruned epochs to reach the unpruned best - {args.tol} pt, each sweep's own:")
    print(summary("  epochs", ratios))
    print(summary("  old figure, pruned epochs to target / unpruned TOTAL epochs (flatters)", old))
    print(interval_note(args.repeats, "the seed variation (sampler and curve noise)"))


if __name__ == "__main__":
    main()
