"""Known ground truth: does the ablation find the effects a SIMULATED objective was given?

The objective has set effects per toggle (on - off), seed noise, and slow starters (rrc and vflip rise
later but end where their effect says), no training (tests/helpers/simulated.py). Each repeat runs two ways:

- design: a 32-run resolution IV foldover (a 16-run array, then its mirror image, one seed each), no
  pruner, queued in Optuna and analysed by ``sweeper.results.effects`` (the joint least-squares fit, Holm
  across the 8 toggles);
- adaptive: 32 trials of TPE (10 startup trials) + Hyperband (min_resource 2, reduction_factor 3), analysed
  by today's marginal-means table (``sweeper.results.ablation``, read at the common epoch).

    python bench/ablation_truth.py              # 50 seeded repeats
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from sweeper.results import ablation
from sweeper.study import space as space_lib
from sweeper.study import spec
from sweeper.sweep import loop as sweep
from tests.results.test_effects import RUNS, SE, TOGGLES, TRUTH, fitted  # noqa: E402


def adaptive(seed: int) -> dict[str, str]:
    raw = {
        "name": f"adaptive-{seed}",
        "data": {"root": "builtin:digits"},
        "epochs": TRUTH.epochs,
        "sampler": {"name": "tpe", "seed": seed, "n_startup_trials": 10},
        "pruner": {"name": "hyperband", "min_resource": 2, "reduction_factor": 3},
        "space": {k: {"bool": True} for k in TOGGLES},
    }
    s = spec.parse(raw, Path("adaptive.yaml"))
    st = sweep.open_study(s, None, store=optuna.storages.InMemoryStorage())
    rng = np.random.default_rng(seed)

    def objective(trial: optuna.Trial) -> float:
        c = TRUTH.curve(space_lib.suggest(trial, s.space), rng)
        for e, v in enumerate(c, 1):
            trial.report(v, e)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return max(c)

    st.optimize(objective, n_trials=RUNS)
    ab = ablation.compute(st.get_trials(deepcopy=False), TOGGLES, "val_acc", "maximize")
    return {r.param: r.verdict if r.effect is None else f"{r.verdict}:{r.effect:+.4f}" for r in ab.rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    big = {k: e for k, e in TRUTH.effects.items() if abs(e) >= 2 * SE}
    small = [k for k, e in TRUTH.effects.items() if abs(e) < SE]
    # repeats with every sign right, opposite calls, small ones left unresolved, true calls
    tally = {"design": [0, 0, 0, 0], "adaptive": [0, 0, 0, 0]}
    for seed in range(args.repeats):
        d = {k: (e.verdict, e.estimate) for k, e in fitted(seed).items()}
        a_raw = adaptive(seed)
        a = {k: (v.split(":")[0], float(v.split(":")[1]) if ":" in v else 0.0) for k, v in a_raw.items()}
        for name, got in (("design", d), ("adaptive", a)):
            t = tally[name]
            t[0] += all(np.sign(got[k][1]) == np.sign(e) for k, e in big.items())
            t[1] += sum(got[k][0] == ("hurts" if e > 0 else "helps") for k, e in big.items())
            t[2] += sum(got[k][0] in ("cannot resolve", "unclear", "too few trials") for k in small)
            t[3] += sum(got[k][0] == ("helps" if e > 0 else "hurts") for k, e in big.items())
    n = args.repeats
    print(f"SIMULATED objective, {n} seeded repeats, {RUNS} runs each; effects >= 2 SE: {sorted(big)}")
    for name, (right, opposite, flagged, called) in tally.items():
        print(
            f"{name:>8}: every effect >= 2 SE with the right sign in {right}/{n} repeats; "
            f"called in its true direction {called}/{n * len(big)}; called in the opposite direction "
            f"{opposite}/{n * len(big)}; small effects left unresolved {flagged}/{n * len(small)}"
        )


if __name__ == "__main__":
    main()
