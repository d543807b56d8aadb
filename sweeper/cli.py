"""The ``sweeper`` command line. Commands are thin: parse options, call the library, print.

Heavy libraries (torch, timm, optuna, mlflow) are imported inside commands so ``--help`` is instant.
Exit codes: 0 done; 2 a usage error (Click's usage message) or a :class:`SweeperError` (one line on
stderr); 130 interrupted; 1 a bug (with its traceback).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import typer
import yaml

from sweeper import spec as spec_lib
from sweeper.errors import SweeperError

ENVIRONMENT = {  # every variable sweeper reads; the top-level --help and the README list them
    "SWEEPER_STORAGE": "Optuna storage URL, as --storage (default sqlite:///sweeper.db)",
    "MLFLOW_TRACKING_URI": "MLflow tracking URI, as --tracking-uri (default sqlite:///mlruns/mlflow.db)",
    "SWEEPER_STUDIES_DIR": "where study names are looked up (default ./studies, else the shipped ones)",
    "SWEEPER_DATA_DIR": "generated datasets and decoded-image caches (default ~/.cache/sweeper)",
    "SWEEPER_CACHE_GB": "decoded-image cache budget in GB; 0 turns it off (default half the free space)",
    "SWEEPER_CHECKPOINTS": "trial checkpoints that interrupted trials resume from (default ./checkpoints)",
    "SWEEPER_HEARTBEAT": "seconds between a running trial's heartbeats (default 20)",
    "SWEEPER_GRACE": "seconds without a heartbeat before a trial counts as lost and is redone (default 60)",
    "SWEEPER_STORE_PATIENCE": "seconds a sweep waits for an unreachable store before it stops (default 300)",
    "SWEEPER_FAULT": "test-only: faults to inject at named points (see sweeper/faults.py); never set it",
    "SWEEPER_FAULT_DIR": "test-only: where SWEEPER_FAULT's pauses leave their markers",
}

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter sweeps for fine-tuning timm image classifiers (Optuna + MLflow).",
    epilog="Environment variables:\n\n" + "\n\n".join(f"{k}: {v}." for k, v in ENVIRONMENT.items()),
)


def complete_study(incomplete: str) -> list[str]:
    """Shell completion for STUDY: the names of the study files in the studies directory."""
    return [p.stem for p in spec_lib.available_studies() if p.stem.startswith(incomplete)]


def installed_version() -> str:
    """The installed distribution's version, else the package's own (a source checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("sweeper")
    except PackageNotFoundError:
        from sweeper import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sweeper {installed_version()}")
        raise typer.Exit()


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be > 0, got {value:g}")
    return value


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """The options before the command; --version acts (eagerly) in its callback."""


StudyArg = Annotated[
    str,
    typer.Argument(
        metavar="STUDY",
        help="A study name in studies/ or a path to a study file.",
        autocompletion=complete_study,
    ),
]
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
        envvar="SWEEPER_STORAGE",
        help="Optuna storage URL (SQLAlchemy). Default: sqlite:///sweeper.db.",
    ),
]
Combine = Literal["refit", "folds", "top", "soup"]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI. Default: sqlite:///mlruns/mlflow.db.",
    ),
]


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 3e-3, 1E5: YAML 1.1 says str


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SweeperError(f"--set {item!r}: expected KEY=VALUE, e.g. --set backbone=resnet18")
        if _YAML11_FLOAT.fullmatch(raw.strip()):
            out[key.strip()] = float(raw)
            continue
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

    backbones: set[str] = set()
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
        float | None,
        typer.Option("--timeout", callback=_positive, help="Stop starting new trials after S seconds."),
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
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Store the study under this name instead of the file's `name:`: a new study, e.g. to try "
            "other --set values without mixing them into the existing one.",
        ),
    ] = None,
) -> None:
    """Run (or resume) a study until it holds --trials trials, each a real fine-tuning run."""
    from sweeper import data as data_lib
    from sweeper import progress as progress_lib
    from sweeper import record as record_lib
    from sweeper import stores, sweep, tracking
    from sweeper import trial as trial_lib
    from sweeper import workers as workers_lib

    spec = load_spec(study, data, set_, epochs)
    if name is not None:
        if not name.strip():
            raise SweeperError("--name must not be empty")
        spec = dataclasses.replace(spec, name=name.strip())
    slots = workers_lib.slots(workers, gpus, workers_lib.cuda_device_count() if gpus else 0)
    ds = data_lib.scan(spec.data_root, max_pixels=spec.max_pixels)
    overrides = {"set": parse_sets(set_), "epochs": epochs, "data": str(data) if data else None, "name": name}
    rec = record_lib.StudyRecord.of(spec, ds, overrides)
    existing = _existing(spec.name, storage)
    if existing is not None:  # refuse a changed definition before anything slow
        record_lib.ensure(existing, rec)
    preflight(spec)
    tracker = tracking.Tracker(tracking_uri, spec.name)
    t0 = time.monotonic()
    on = f"GPUs {','.join(g for g in slots if g is not None)}" if gpus else "CPU"
    typer.echo(
        f"study {spec.name}: {len(ds.classes)} classes, {len(ds.train)} train / {len(ds.val)} val / "
        f"{len(ds.test)} test images{_skipped(ds)}; "
        f"{len(slots)} worker{'s' if len(slots) > 1 else ''} on {on}; "
        f"storage {stores.display_url(stores.resolve_storage(storage))}; "
        f"MLflow {stores.display_url(tracker.uri)}"
    )
    progress = progress_lib.create(trials, spec.epochs, spec.metric)
    if existing is not None:  # a resumed study: progress starts from what storage holds
        progress.update(record_lib.counts(existing.get_trials(deepcopy=False)), _best_value(existing))
    threads = workers_lib.cpu_threads(len(slots)) if gpus is None else None
    objectives = [
        trial_lib.make_objective(spec, ds, tracker, progress, gpu=g, slot=i, threads=threads)
        for i, g in enumerate(slots)
    ]

    def on_trial_end(st: Any, t: Any) -> None:
        counts = record_lib.counts(st.get_trials(deepcopy=False))
        progress.trial_finished(t.number, t.state.name, t.value, record_lib.why(t), counts, _best_value(st))

    st = _sweep(
        progress, lambda: sweep.run(spec, trials, objectives, storage, timeout, 0, on_trial_end, tracker, rec)
    )
    c = record_lib.counts(st.get_trials(deepcopy=False))
    typer.echo(
        f"done in {time.monotonic() - t0:.0f}s: {c['counted']}/{trials} trials "
        f"({c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed)"
    )
    _print_best(st, spec.metric)
    typer.echo(
        f"compare trials in the MLflow UI: mlflow ui --backend-store-uri {stores.display_url(tracker.uri)}  "
        f"(experiment {spec.name!r})"
    )


def _sweep(progress: Any, run: Any) -> Any:
    """Run the sweep under the live progress; SIGTERM (docker stop, preemption) acts as Ctrl-C."""
    import signal

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        with progress:
            return run()
    except KeyboardInterrupt:
        typer.echo(
            "\ninterrupted: the running trials were closed as failed, not counted, and their params "
            "re-queued (unless a trial's reason says its retries were used up); re-run the same command "
            "to finish the study (they resume from their last epoch)",
            err=True,
        )
        raise typer.Exit(130) from None


def _skipped(ds: Any) -> str:
    """The files of the data folder that are not images, counted in the start-up line (never fatal)."""
    n = len(ds.skipped)
    return f" ({n} non-image file{'s' if n != 1 else ''} skipped, e.g. {ds.skipped[0]})" if n else ""


def _existing(name: str, storage: str | None) -> Any:
    """The stored study of this name, or None when there is none yet."""
    from sweeper import stores

    try:
        return stores.load_existing(name, storage)
    except SweeperError as e:
        if str(e).startswith("no study "):
            return None
        raise


def _best_value(st: Any) -> float | None:
    try:
        return float(st.best_value)
    except ValueError:  # no complete trial yet
        return None


def _print_best(st: Any, metric: str) -> None:
    from sweeper import record as record_lib

    try:
        best = record_lib.best_trial(st)
    except SweeperError:
        typer.echo("no complete trial yet")
        return
    typer.echo(
        f"best trial {best.number}: {metric}={best.value:.4f} at epoch "
        f"{best.user_attrs.get(record_lib.BEST_EPOCH, '?')}"
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
    from sweeper import record as record_lib
    from sweeper import refit, tracking

    if set_ and combine != "refit":
        raise SweeperError(f"--set applies to --combine refit only; --combine {combine} retrains nothing")
    src = record_lib.open_recorded(study, storage)
    ds = data_lib.scan(str(data) if data else src.spec.data_root, max_pixels=src.spec.max_pixels)
    record_lib.check_classes(src.record, ds.classes, ds.root)
    tracker = tracking.Tracker(tracking_uri, src.spec.name)
    if combine != "refit":
        _warn(src.notes)
        summary = refit.combine(src, ds, out, tracker, combine, top)
        val = f"; val_acc={summary['val_acc']:.4f}" if summary.get("val_acc") is not None else ""
        typer.echo(
            f"{combine} of trials {', '.join(map(str, summary['trials']))} ({summary['members']} models"
            f"{val}); wrote {', '.join(str(out / f) for f in summary['files'])}"
        )
        return
    p = refit.plan(src, parse_sets(set_))
    _warn(p.notes)
    typer.echo(
        f"refitting trial {p.trial.number} ({src.spec.metric}={p.trial.value:.4f}, the best of "
        f"{src.spec.name!r}) with its recorded config on train+val, {p.stop_epoch} of its {p.cfg.epochs} "
        f"epochs (its best epoch, on its own LR schedule); data {ds.root}"
    )
    for key, value in p.overrides.items():
        typer.echo(f"  --set {key}={value} (the trial ran with {p.trial_value(key)!r})")
    summary = refit.refit_best(p, ds, out, tracker, src.spec.name)
    typer.echo(f"wrote {', '.join(str(out / f) for f in summary['files'])}")


def _warn(notes: list[str]) -> None:
    for note in notes:
        typer.echo(f"warning: {note}", err=True)


@app.command("studies")
def studies(storage: StorageOpt = None) -> None:
    """List study files with their trials (complete/pruned/failed) and best value."""
    import optuna

    from sweeper import record as record_lib
    from sweeper import stores

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stored: dict[str, Any] = {}
    try:
        st = stores.storage(storage)
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
            c = record_lib.counts(s.get_trials(deepcopy=False))
            row = [c["complete"], c["pruned"], c["fail"]]
            if c["complete"]:
                best = f"{s.best_value:.4f}"
        typer.echo(f"{name:<20} {row[0]:>8} {row[1]:>7} {row[2]:>7} {best:>8}  {path}")


@app.command("show")
def show(
    study: StudyArg,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows in the table of best trials.")] = 10,
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

    from sweeper import record as record_lib

    src = record_lib.open_recorded(study, storage)
    spec, st = src.spec, src.study
    _warn(src.notes)
    c = record_lib.counts(st.get_trials(deepcopy=False))
    typer.echo(
        f"study {spec.name}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed, "
        f"{c['running']} running"
    )
    _print_record(src.record)
    _print_best(st, spec.metric)
    if ablation:
        _print_ablation(spec, st)
        return
    done = [t for t in st.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: cast(float, t.value), reverse=spec.direction == "maximize")
    keys = sorted(spec.space)
    typer.echo("")
    typer.echo("  ".join([f"{'trial':>5}", f"{spec.metric:>8}", f"{'epoch':>5}", *keys]))
    for t in done[:top]:
        cells = [f"{t.number:>5}", f"{t.value:>8.4f}", f"{t.user_attrs.get(record_lib.BEST_EPOCH, ''):>5}"]
        cells += [_fmt(t.params.get(k)).rjust(len(k)) for k in keys]
        typer.echo("  ".join(cells))


def _print_record(rec: Any) -> None:
    """What the study ran with: file, overrides, data and versions (from the study record)."""
    if rec is None:
        return
    o = rec.overrides
    sets = " ".join(f"--set {k}={v}" for k, v in (o.get("set") or {}).items())
    flags = [sets] + [f"--{k} {o[k]}" for k in ("epochs", "data", "name") if o.get(k)]
    given = " ".join(x for x in flags if x)
    d = rec.data
    typer.echo(f"  ran with: {rec.path} {given}".rstrip())
    typer.echo(
        f"  data: {d.get('root')} ({len(d.get('classes', []))} classes, "
        f"{', '.join(f'{n} {k}' for k, n in d.get('images', {}).items())}; digest {d.get('digest')})"
    )
    typer.echo("  versions: " + ", ".join(f"{k} {v}" for k, v in rec.versions.items()))


def _print_ablation(spec: spec_lib.Study, st: Any) -> None:
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
    from sweeper import record as record_lib
    from sweeper import report as report_lib
    from sweeper import stores, tracking

    src = record_lib.open_recorded(study, storage)
    spec, st = src.spec, src.study
    _warn(src.notes)
    tracker = tracking.Tracker(tracking_uri, spec.name)
    out = out or Path(f"{spec.name}-report.html")
    if out.is_dir():
        out = out / f"{spec.name}-report.html"
    run_id = report_lib.write(spec, st, tracker, out, top)
    typer.echo(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opens offline); logged to MLflow experiment "
        f"{spec.name!r} as run {report_lib.REPORT_RUN!r} ({run_id}) in {stores.display_url(tracker.uri)}"
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
    from sweeper import sweep

    spec = load_spec(study, sets=set_)
    sweep.build_sampler(spec)
    sweep.build_pruner(spec)
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


@app.command("doctor")
def doctor(
    study: StudyArg,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Fix what is safe: close RUNNING leftovers of dead workers as FAIL and re-queue their "
            "params, close or trash orphan runs, record missing runs, delete stale checkpoints and "
            "staging folders.",
        ),
    ] = False,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Check a study's invariants in Optuna and MLflow; exit 1 while problems remain."""
    from sweeper import doctor as doctor_lib

    try:
        name = spec_lib.load(study).name
    except SweeperError:
        name = study  # a name in storage only (e.g. a study run with --name)
    lines, left = doctor_lib.check(name, storage, tracking_uri, repair)
    for line in lines:
        typer.echo(line)
    typer.echo(f"study {name}: " + (f"{left} problem{'s' if left != 1 else ''}" if left else "clean"))
    raise typer.Exit(1 if left else 0)


def _usage_errors() -> tuple[type[Exception], ...]:
    """The exception classes of Click's usage errors, whichever Click raises them.

    Typer >= 0.2x bundles its own copy of Click (``typer._click``), whose ``ClickException`` derives from
    the public ``typer.TyperException``, not from the ``click`` package's; older Typer raises ``click``'s.
    """
    classes: list[type[Exception]] = []
    if isinstance(getattr(typer, "TyperException", None), type):
        classes.append(typer.TyperException)
    try:
        import click

        classes.append(click.ClickException)
    except ImportError:  # pragma: no cover - Typer without the click package
        pass
    return tuple(classes)


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
    except _usage_errors() as e:  # usage: ..., Try 'sweeper CMD --help' for help., Error: ...
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"Error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
