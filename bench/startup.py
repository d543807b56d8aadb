"""Benchmark (g): time from ``run-study`` to a trial's first training batch, on a first run (empty stores,
no cache: the decode-once cache is built) and a second run (the same study, one more trial: the cache is
there).

A generated reference-like folder (``bench/make_reference.py``), a 1-epoch study of a small timm model at
224 px with the default augmentation, run through the CLI in a fresh working directory as a user runs
it. Each figure is the sum of two measured parts: from the command's start to the trial's MLflow run
(created by the sweep process as it hands the trial to its process) and the trial's own
``time_to_first_batch_s`` (from its process's start: imports, model, caches, DataLoader workers). The
gap between the run's creation and the process's fork is in neither (the sweep's own hand-off).

    python bench/startup.py                          # 1,000 train / 100 val / 100 test, 100 classes
    python bench/startup.py --train 18900 --val 2100 --test 2300   # the reference size
    python bench/startup.py --root ROOT   # a folder bench/make_reference.py wrote before
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDY = """
name: startup
data: {{root: {root}}}
objective: {{metric: val_acc, direction: maximize}}
epochs: 1
sampler: {{name: random, seed: 0}}
fixed: {{backbone: {model}, pretrained: false, img_size: 224, batch_size: 32}}
space:
  lr_head: {{float: [1.0e-4, 1.0e-2], log: true}}
"""


def run(study: Path, trials: int, cwd: Path) -> tuple[float, float, float]:
    """Run ``run-study`` to ``trials`` trials; the newest trial's (to its run, its first batch, total)."""
    from mlflow import MlflowClient

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "sweeper", "run-study", str(study), "--trials", str(trials)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    total = time.time() - t0
    if r.returncode:
        raise SystemExit(f"run-study failed: {r.stderr.strip().splitlines()[-1:]}")
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("startup")
    assert exp is not None
    runs = client.search_runs(
        [exp.experiment_id], "tags.`sweeper.kind` != 'study'", order_by=["start_time DESC"]
    )
    newest = runs[0]
    to_run = newest.info.start_time / 1000 - t0
    return to_run, newest.data.metrics["time_to_first_batch_s"], total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--model", default="test_resnet", help="timm model (trained from scratch, 1 epoch)")
    ap.add_argument("--root", type=Path, help="an existing generated folder to use (default: generate one)")
    args = ap.parse_args()
    from make_reference import make

    with tempfile.TemporaryDirectory(prefix="sweeper-bench-startup-") as d:
        work = Path(d)
        os.environ["SWEEPER_DATA_DIR"] = str(work / "sweeper-data")
        root = args.root or work / "ref"
        if args.root is None:
            make(root, args.train, args.val, args.test, args.classes)
        counts = [sum(1 for _ in (root / s).rglob("*.jpg")) for s in ("train", "val", "test")]
        jpeg_mb = sum(f.stat().st_size for f in root.rglob("*.jpg")) / 1e6
        study = work / "startup.yaml"
        study.write_text(STUDY.format(root=root.resolve(), model=args.model))
        print(
            f"{counts[0]} train / {counts[1]} val / {counts[2]} test JPEGs 500x375 ({jpeg_mb:.0f} MB), "
            f"{args.model} at 224 px, {os.cpu_count()} CPUs",
            flush=True,
        )
        for label, trials in (("first run (builds the cache)", 1), ("second run (cache there)", 2)):
            to_run, first, total = run(study, trials, work)
            print(  # flushed: the command takes minutes at the reference size
                f"  {label:<29}: run-study -> first batch {to_run + first:5.1f}s "
                f"(to the trial's run {to_run:4.1f}s + the trial's own {first:4.1f}s); command {total:5.1f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
