"""Benchmark (b): fixed overhead of a sweep. ``sweeper run-study`` for N short trials vs the same
training loops called bare.

Both sides are fresh processes started the same way and timed from outside, so each pays its own
interpreter start and imports. The sweep side is the real CLI: Optuna (SQLite storage), MLflow
(SQLite store, params, per-epoch metric batches, artifacts: weights, confusion matrix, config),
pruner off so both sides train the same epochs. The bare side scans the dataset and calls
``train.run_trial`` on the very configs the sweep ran (its trials' params, read back from the study).
Rounds alternate sweep, bare, sweep, bare, ... and the medians are compared. Goal: <= 5% overhead.

    python bench/overhead.py           # 4 trials x 3 epochs, 3 rounds
    python bench/overhead.py --quick   # 2 trials x 2 epochs, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STUDY = """name: bench-overhead
data: {{root: "builtin:digits"}}
objective: {{metric: val_acc, direction: maximize}}
epochs: {epochs}
sampler: {{name: random, seed: 0}}
pruner: none
fixed:
  {{backbone: test_resnet, img_size: 16, num_workers: 0, batch_size: 128, aug: {{rrc: false, hflip: false}}}}
space:
  lr_backbone: {{float: [1.0e-3, 1.0e-2], log: true}}
  lr_head: {{float: [1.0e-3, 1.0e-2], log: true}}
"""


def bare(study_file: str, params_file: str) -> None:
    """The bare side: the same data scan and ``run_trial`` calls, no Optuna, no MLflow."""
    from sweeper.data import images as data
    from sweeper.study import spec
    from sweeper.train import fit as train

    s = spec.load(study_file)
    ds = data.scan(s.data_root)
    for params in json.loads(Path(params_file).read_text()):
        train.run_trial(s.resolve(params), ds, metric=s.metric)


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of a child process.

    CPU time is the steadier figure on a machine shared with other jobs: waiting for a core
    stretches wall time but not CPU time.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 trials x 2 epochs, 1 round")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bare", nargs=2, metavar=("STUDY", "PARAMS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        return bare(*args.bare)
    if args.quick:
        args.trials, args.epochs, args.rounds = 2, 2, 1

    import optuna

    os.environ.setdefault("SWEEPER_DATA_DIR", str(Path(tempfile.gettempdir()) / "sweeper-bench-data"))
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-overhead-") as d:
        work = Path(d)
        study = work / "bench-overhead.yaml"
        study.write_text(STUDY.format(epochs=args.epochs))
        params_file = work / "params.json"
        sweep_s: list[tuple[float, float]] = []
        bare_s: list[tuple[float, float]] = []
        help_s: list[float] = []
        for r in range(args.rounds + 1):  # round 0 warms up: digits folder, decoded-image cache, page cache
            run_dir = work / f"round{r}"
            run_dir.mkdir()
            cmd = [
                sys.executable,
                "-m",
                "sweeper",
                "run-study",
                str(study),
                "--trials",
                str(args.trials),
                "--storage",
                f"sqlite:///{run_dir / 'optuna.db'}",
                "--tracking-uri",
                f"sqlite:///{run_dir / 'mlruns' / 'mlflow.db'}",
            ]
            t_sweep = timed(cmd, run_dir)
            st = optuna.load_study(study_name="bench-overhead", storage=f"sqlite:///{run_dir / 'optuna.db'}")
            params_file.write_text(json.dumps([t.params for t in st.get_trials(deepcopy=False)]))
            t_bare = timed([sys.executable, __file__, "--bare", str(study), str(params_file)], run_dir)
            help_s.append(timed([sys.executable, "-m", "sweeper", "--help"], run_dir)[0])
            if r:
                sweep_s.append(t_sweep)
                bare_s.append(t_bare)
            label = " (warm-up)" if not r else ""
            print(
                f"round {r}{label}: run-study {t_sweep[0]:.1f}s wall {t_sweep[1]:.1f}s CPU, "
                f"bare {t_bare[0]:.1f}s wall {t_bare[1]:.1f}s CPU",
                flush=True,
            )
    print(f"\n{args.trials} trials x {args.epochs} epochs (test_resnet, digits, 16px), {args.rounds} rounds")
    for i, what in enumerate(("wall", "CPU")):
        ms, mb = statistics.median(t[i] for t in sweep_s), statistics.median(t[i] for t in bare_s)
        print(
            f"{what:>4}: run-study median {ms:.2f}s, bare loops median {mb:.2f}s: overhead "
            f"{100 * (ms / mb - 1):+.1f}% = {(ms - mb) / args.trials:.2f}s per trial (goal <= 5%)"
        )
    print(f"`sweeper --help` median {statistics.median(help_s):.2f}s over {len(help_s)} runs")


if __name__ == "__main__":
    main()
