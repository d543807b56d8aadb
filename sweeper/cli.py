"""The ``sweeper`` command line. Commands are thin: parse options, call the library, print.

Heavy libraries (torch, timm, optuna, mlflow) are imported inside commands so ``--help`` is instant.
Every :class:`SweeperError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml

from sweeper import spec as spec_lib
from sweeper.errors import SweeperError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter sweeps for fine-tuning timm image classifiers (Optuna + MLflow).",
)

StudyArg = Annotated[str, typer.Argument(help="A study name in studies/ or a path to a study file.")]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="Dataset root (overrides the study's data.root).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="KEY=VALUE: override a fixed param or pin a search dimension (e.g. backbone=resnet18). "
        "Repeatable.",
    ),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna storage URL (SQLAlchemy). Default: $SWEEPER_STORAGE, else sqlite:///sweeper.db.",
    ),
]
Combine = Literal["refit", "folds", "top", "soup"]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db.",
    ),
]


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SweeperError(f"--set {item!r}: expected KEY=VALUE, e.g. --set backbone=resnet18")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def load_spec(
    study: str, data: Path | None = None, sets: list[str] | None = None, epochs: int | None = None
) -> spec_lib.Study:
    return spec_lib.load(study).with_overrides(parse_sets(sets), epochs, str(data) if data else None)


def preflight(spec: spec_lib.Study) -> None:
    """Fail before any trial on what every trial would fail on: unknown models, bad pretrained weights."""
    from sweeper import model as model_lib

    backbones = set()
    if "backbone" in spec.space:
        backbones.update(spec.space["backbone"].choices)
    backbones.add(spec.resolve({}).backbone)
    for b in sorted(backbones):
        model_lib.check_backbone(b)
    if "backbone" not in spec.space:
        cfg = spec.resolve({})
        if cfg.pretrained or cfg.weights_file:
            model_lib.create(cfg, num_classes=2)  # loads the weights once: missing weights fail here


@app.command("run-study")
def run_study(
    study: StudyArg,
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            min=1,
            help="Total trials the study should hold. Re-running the same command resumes the study and "
            "only runs what is missing (interrupted or lost trials are redone); raise N to add trials.",
        ),
    ],
    data: DataOpt = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Cap epochs per trial (quick runs).")
    ] = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop starting new trials after S seconds.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Trials at once on this machine, each in its own process. Default: one per --gpus entry, "
            "else 1.",
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option("--gpus", help="GPU indexes, e.g. 0,1,2,3: one worker per GPU; its trials see only it."),
    ] = None,
) -> None:
    """Run (or resume) a study until it holds --trials trials, each a real fine-tuning run."""
    import signal

    from sweeper import data as data_lib
    from sweeper import progress as progress_lib
    from sweeper import study as study_lib
    from sweeper import tracking
    from sweeper import workers as workers_lib

    spec = load_spec(study, data, set_, epochs)
    slots = workers_lib.slots(workers, gpus, workers_lib.cuda_device_count() if gpus else 0)
    preflight(spec)
    ds = data_lib.scan(spec.data_root)
    tracker = tracking.Tracker(tracking_uri, spec.name)
    t0 = time.monotonic()
    on = f"GPUs {','.join(g for g in slots if g is not None)}" if gpus else "CPU"
    typer.echo(
        f"study {spec.name}: {len(ds.classes)} classes, {len(ds.train)} train / {len(ds.val)} val images; "
        f"{len(slots)} worker{'s' if len(slots) > 1 else ''} on {on}; "
        f"storage {study_lib.display_url(study_lib.resolve_storage(storage))}; "
        f"MLflow {study_lib.display_url(tracker.uri)}"
    )
    progress = progress_lib.create(trials, spec.epochs, spec.metric)
    try:  # a resumed study: progress starts from what storage holds
        existing = study_lib.load_existing(spec.name, storage)
        progress.update(study_lib.counts(existing.get_trials(deepcopy=False)), _best_value(existing))
    except SweeperError:
        pass
    threads = workers_lib.cpu_threads(len(slots)) if gpus is None else None
    objectives = [
        study_lib.make_objective(spec, ds, tracker, progress, gpu=g, slot=i, threads=threads)
        for i, g in enumerate(slots)
    ]

    def on_trial_end(st: Any, t: Any) -> None:
        keys = (study_lib.FAIL_REASON, study_lib.PRUNE_REASON, study_lib.INFEASIBLE, study_lib.OOM_RETRY)
        notes = [t.user_attrs.get(k) for k in keys]
        if t.user_attrs.get(study_lib.RESUMED):
            notes.append(f"resumed after epoch {t.user_attrs[study_lib.RESUMED]}")
        why = "; ".join(n for n in notes if n)
        counts = study_lib.counts(st.get_trials(deepcopy=False))
        progress.trial_finished(t.number, t.state.name, t.value, why, counts, _best_value(st))

    def terminate(signum: int, frame: Any) -> None:  # docker stop, a scheduler's preemption notice
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        with progress:
            st = study_lib.run(
                spec, trials, objectives, storage, timeout, on_trial_end=on_trial_end, tracker=tracker
            )
    except KeyboardInterrupt:
        typer.echo(
            "\ninterrupted: running trials were closed as failed and their params re-queued; "
            "re-run the same command to finish the study (they resume from their last epoch)",
            err=True,
        )
        raise typer.Exit(130) from None
    c = study_lib.counts(st.get_trials(deepcopy=False))
    typer.echo(
        f"done in {time.monotonic() - t0:.0f}s: {c['counted']}/{trials} trials "
        f"({c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed)"
    )
    _print_best(st, spec.metric)
    typer.echo(
        f"compare trials in the MLflow UI: mlflow ui --backend-store-uri {tracker.uri}  "
        f"(experiment {spec.name!r})"
    )


def _best_value(st: Any) -> float | None:
    try:
        return float(st.best_value)
    except ValueError:  # no complete trial yet
        return None


def _print_best(st: Any, metric: str) -> None:
    from sweeper import study as study_lib

    try:
        best = study_lib.best_trial(st)
    except SweeperError:
        typer.echo("no complete trial yet")
        return
    typer.echo(
        f"best trial {best.number}: {metric}={best.value:.4f} at epoch "
        f"{best.user_attrs.get(study_lib.BEST_EPOCH, '?')}"
    )
    for k, v in sorted(best.params.items()):
        typer.echo(f"  {k} = {v}")


@app.command("refit-best")
def refit_best(
    study: StudyArg,
    out: Annotated[Path, typer.Option("--out", help="Where the model, config.yaml and prediction.csv go.")],
    data: DataOpt = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    combine: Annotated[
        Combine,
        typer.Option(
            "--combine",
            help="refit: retrain the best config on train+val. folds: average the best k-fold trial's "
            "fold models. top: average the --top best trials' models. soup: greedy weight soup of the "
            "--top best trials that share the best one's architecture. The last three retrain nothing.",
        ),
    ] = "refit",
    top: Annotated[int, typer.Option("--top", min=1, help="Trials considered by --combine top/soup.")] = 3,
) -> None:
    """Write the submission from the best trial: retrained on train+val, or combined from kept weights."""
    from sweeper import data as data_lib
    from sweeper import refit, tracking

    spec = load_spec(study, data, set_)
    ds = data_lib.scan(spec.data_root)
    tracker = tracking.Tracker(tracking_uri, spec.name)
    if combine == "refit":
        summary = refit.refit_best(spec, ds, out, storage, tracker)
        typer.echo(
            f"refit trial {summary['trial']} ({spec.metric}={summary['value']:.4f}) for "
            f"{summary['epochs']} epochs on train+val; "
            f"wrote {', '.join(str(out / f) for f in summary['files'])}"
        )
        return
    summary = refit.combine(spec, ds, out, storage, tracker, combine, top)
    val = f"; val_acc={summary['val_acc']:.4f}" if summary.get("val_acc") is not None else ""
    typer.echo(
        f"{combine} of trials {', '.join(map(str, summary['trials']))} ({summary['members']} models{val}); "
        f"wrote {', '.join(str(out / f) for f in summary['files'])}"
    )


@app.command("studies")
def studies(storage: StorageOpt = None) -> None:
    """List study files with their trials (complete/pruned/failed) and best value."""
    import optuna

    from sweeper import study as study_lib

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stored: dict[str, Any] = {}
    try:
        st = study_lib.storage(storage)
        stored = {s.study_name: s for s in optuna.get_all_study_summaries(st)}
    except SweeperError:
        st = None
    typer.echo(f"{'study':<20} {'complete':>8} {'pruned':>7} {'failed':>7} {'best':>8}  file")
    for path in spec_lib.available_studies():
        try:
            name = spec_lib.load(str(path)).name
        except SweeperError as e:
            typer.echo(f"{path.stem:<20} invalid: {e}")
            continue
        row = [0, 0, 0]
        best = "-"
        if name in stored and st is not None:
            s = optuna.load_study(study_name=name, storage=st)
            c = study_lib.counts(s.get_trials(deepcopy=False))
            row = [c["complete"], c["pruned"], c["fail"]]
            if c["complete"]:
                best = f"{s.best_value:.4f}"
        typer.echo(f"{name:<20} {row[0]:>8} {row[1]:>7} {row[2]:>7} {best:>8}  {path}")


@app.command("show")
def show(
    study: StudyArg,
    top: Annotated[int, typer.Option("--top", help="Rows in the table of best trials.")] = 10,
    ablation: Annotated[
        bool,
        typer.Option(
            "--ablation",
            help="Instead of the top trials: each on/off dimension's effect on the objective, "
            "with a bootstrap interval, most helpful first.",
        ),
    ] = False,
    storage: StorageOpt = None,
) -> None:
    """Show the best trial and a table of the top trials (or, with --ablation, the ablation table)."""
    from optuna.trial import TrialState

    from sweeper import study as study_lib

    spec = spec_lib.load(study)
    st = study_lib.load_existing(spec.name, storage)
    c = study_lib.counts(st.get_trials(deepcopy=False))
    typer.echo(
        f"study {spec.name}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, "
        f"{c['running']} running"
    )
    _print_best(st, spec.metric)
    if ablation:
        from sweeper import ablation as ablation_lib

        bools = [k for k, d in spec.space.items() if d.kind == "bool"]
        if not bools:
            raise SweeperError(
                f"study {spec.name!r} searches no boolean dimension, so there is nothing "
                "to ablate: the table compares trials with an on/off option on against off"
            )
        ab = ablation_lib.compute(st.get_trials(deepcopy=False), bools, spec.metric, spec.direction)
        typer.echo("")
        for line in ablation_lib.format_table(ab):
            typer.echo(line)
        return
    done = [t for t in st.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: t.value, reverse=spec.direction == "maximize")
    keys = sorted(spec.space)
    typer.echo("")
    typer.echo("  ".join([f"{'trial':>5}", f"{spec.metric:>8}", f"{'epoch':>5}", *keys]))
    for t in done[:top]:
        cells = [f"{t.number:>5}", f"{t.value:>8.4f}", f"{t.user_attrs.get(study_lib.BEST_EPOCH, ''):>5}"]
        cells += [_fmt(t.params.get(k)).rjust(len(k)) for k in keys]
        typer.echo("  ".join(cells))


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@app.command("report")
def report(
    study: StudyArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="The HTML file to write (default: STUDY-report.html here).")
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Trials whose learning curves are drawn.")] = 5,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Write one self-contained HTML report of a study (plots, ablation, trials) and log it to MLflow."""
    from sweeper import report as report_lib
    from sweeper import study as study_lib
    from sweeper import tracking

    spec = spec_lib.load(study)
    st = study_lib.load_existing(spec.name, storage)
    tracker = tracking.Tracker(tracking_uri, spec.name)
    out = out or Path(f"{spec.name}-report.html")
    if out.is_dir():
        out = out / f"{spec.name}-report.html"
    run_id = report_lib.write(spec, st, tracker, out, top)
    typer.echo(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opens offline); logged to MLflow experiment "
        f"{spec.name!r} as run {report_lib.REPORT_RUN!r} ({run_id}) in {tracker.uri}"
    )


@app.command("ui")
def ui(
    study: StudyArg,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=1, max=65535, help="Port on 127.0.0.1 (default: 5000, or any free one if taken)."
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
    open_: Annotated[
        bool, typer.Option("--open", help="Also open the experiment in the default browser.")
    ] = False,
) -> None:
    """Start the MLflow UI on the study's tracking store and print the study's experiment URL."""
    from sweeper import tracking
    from sweeper import ui as ui_lib

    spec = spec_lib.load(study)
    code = ui_lib.serve(tracking.resolve_uri(tracking_uri), spec.name, port, typer.echo, open_)
    raise typer.Exit(code)


@app.command("check")
def check(study: StudyArg, set_: SetOpt = None) -> None:
    """Validate a study file and print its search space; nothing runs."""
    from sweeper import model as model_lib
    from sweeper import space as space_lib
    from sweeper import study as study_lib

    spec = load_spec(study, sets=set_)
    study_lib.build_sampler(spec)
    study_lib.build_pruner(spec)
    backbones = (
        set(spec.space["backbone"].choices) if "backbone" in spec.space else {spec.resolve({}).backbone}
    )
    for b in backbones:
        model_lib.check_backbone(b)
    typer.echo(f"study {spec.name} ({spec.path}) is valid")
    if spec.description:
        typer.echo(f"  {spec.description.strip()}")
    typer.echo(f"  data: {spec.data_root}")
    typer.echo(f"  objective: {spec.direction} {spec.metric}; {spec.epochs} epochs per trial")
    typer.echo(f"  sampler: {spec.sampler}; pruner: {spec.pruner}")
    if spec.max_params is not None:
        typer.echo(
            f"  constraints: at most {spec.max_params:,} parameters (over-budget configs are not trained)"
        )
    typer.echo("  fixed:")
    for k, v in spec.fixed.items():
        typer.echo(f"    {k} = {v}")
    typer.echo("  space:")
    for k, d in spec.space.items():
        typer.echo(f"    {k}: {space_lib.describe(d)}")


@app.command("slurm")
def slurm(
    study: StudyArg,
    trials: Annotated[int, typer.Option("--trials", help="Total trials the study should hold (all tasks).")],
    gpus_per_node: Annotated[
        int, typer.Option("--gpus-per-node", help="GPUs per node: one array task each. 0: CPU nodes.")
    ],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes' worth of tasks in the job array.")] = 1,
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition(s).")] = None,
    time_: Annotated[
        str | None, typer.Option("--time", help="Time limit per task, e.g. 1-00:00:00 (Slurm's format).")
    ] = None,
    workers_per_gpu: Annotated[
        int, typer.Option("--workers-per-gpu", help="Trials at once per task's GPU (or CPU task).")
    ] = 1,
    cpus_per_task: Annotated[int, typer.Option("--cpus-per-task", help="CPUs per array task.")] = 4,
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints", help="Epoch checkpoints on storage all nodes mount. Default: ./checkpoints."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="The batch script to write. Default: slurm/STUDY.sbatch.")
    ] = None,
    submit: Annotated[bool, typer.Option("--submit", help="Also submit it with sbatch.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print the script (the servers are not contacted).")
    ] = False,
    data: DataOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Cap epochs per trial.")] = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Write (and with --submit, sbatch) a Slurm job array: one run-study worker per GPU, one study."""
    from sweeper import reach
    from sweeper import slurm as slurm_lib

    if submit and dry_run:
        raise SweeperError("--submit and --dry-run contradict each other: choose one")
    if submit:
        slurm_lib.require_sbatch()
    spec = load_spec(study, data, set_, epochs)
    job = slurm_lib.Job(
        study=str(spec.path.resolve()),
        name=spec.name,
        trials=trials,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        workdir=Path.cwd(),
        checkpoints=(checkpoints or Path("checkpoints")).resolve(),
        workers_per_gpu=workers_per_gpu,
        cpus_per_task=cpus_per_task,
        partition=partition,
        time=time_,
        run_args=slurm_lib.run_args(data, epochs, set_),
    )
    script = slurm_lib.render(job)
    storage_url, tracking = reach.servers(storage, tracking_uri)
    if dry_run:  # nothing leaves this machine, so the servers need not answer yet
        typer.echo(script, nl=False)
        return
    reach.check_servers(storage_url, tracking)
    path = slurm_lib.write(job, script, out or Path("slurm") / f"{spec.name}.sbatch")
    typer.echo(
        f"wrote {path}: {job.tasks} array tasks for study {spec.name} ({trials} trials); storage "
        f"{reach.mask(storage_url)}, MLflow {reach.mask(tracking)} (both reachable from here)"
    )
    if reach.is_loopback(storage_url) or reach.is_loopback(tracking):
        typer.echo("note: a localhost URL reaches only this machine; tasks on other nodes need its name")
    if not submit:
        typer.echo(f"submit: SWEEPER_STORAGE=... MLFLOW_TRACKING_URI=... sbatch {path}")
        return
    job_id = slurm_lib.submit(path, storage_url, tracking, dict(os.environ))
    typer.echo(f"submitted job {job_id}: squeue -j {job_id}; logs in {job.logs}")


@app.command("k8s")
def k8s(
    study: StudyArg,
    trials: Annotated[int, typer.Option("--trials", help="Total trials the study should hold (all pods).")],
    workers: Annotated[int, typer.Option("--workers", help="Worker pods at once, one GPU each.")],
    image: Annotated[
        str, typer.Option("--image", help="The workers' image (docker/Dockerfile), as the cluster pulls it.")
    ] = "sweeper:latest",
    mlflow_image: Annotated[
        str, typer.Option("--mlflow-image", help="The MLflow server's image (docker/mlflow.Dockerfile).")
    ] = "sweeper-mlflow:latest",
    namespace: Annotated[str, typer.Option("--namespace", help="Kubernetes namespace.")] = "sweeper",
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the kustomize files. Default: print them.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", help="An external PostgreSQL URL (no password) instead of the StatefulSet."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="An external MLflow server URL instead of the Deployment."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Cap epochs per trial.")] = None,
    set_: SetOpt = None,
) -> None:
    """Render Kubernetes manifests: PostgreSQL, MLflow and an Indexed Job of GPU workers for one study."""
    from sweeper import k8s as k8s_lib

    spec = load_spec(study, None, set_, epochs)
    passed = [*(["--epochs", str(epochs)] if epochs else []), *[a for s in set_ or [] for a in ("--set", s)]]
    plan = k8s_lib.Plan(
        study_name=spec.name,
        study_text=spec.path.read_text(),
        trials=trials,
        workers=workers,
        namespace=namespace,
        image=image,
        mlflow_image=mlflow_image,
        storage=storage,
        tracking_uri=tracking_uri,
        uses_data=not str(spec.data_root).startswith("builtin:"),
        run_args=tuple(passed),
    )
    text = k8s_lib.to_text(plan)
    if out is None:
        typer.echo("".join(f"# --- {name}\n{body}" for name, body in text.items()), nl=False)
        return
    k8s_lib.write(out, text)
    typer.echo(
        f"wrote {', '.join(text)} to {out}; then: kubectl create namespace {namespace}; "
        f"kubectl -n {namespace} create secret generic {k8s_lib.SECRET} --from-literal=password=...; "
        f"copy the dataset into the PVC sweeper-data; kubectl apply -k {out}"
    )


def main() -> None:
    """Console entry point: one-line errors for user mistakes, a traceback only for bugs."""
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
        sys.exit(rc if isinstance(rc, int) else 0)
    except SweeperError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
