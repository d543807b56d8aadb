"""Commands that train: run-study (the sweep) and refit-best (the submission)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sweeper.cli.app import (
    OUTPUT,
    Combine,
    DataOpt,
    GpusOpt,
    JsonOpt,
    PickOpt,
    SetOpt,
    StorageOpt,
    StudyArg,
    TrackingOpt,
    WorkersOpt,
    _positive,
    _print_json,
    _warn,
    app,
    load_spec,
    out_dir,
    parse_sets,
    preflight,
    result,
    say,
    wants_json,
)
from sweeper.errors import Interrupted, SweeperError

if TYPE_CHECKING:
    import optuna

    from sweeper.data.images import ImageFolderData
    from sweeper.store import tracking
    from sweeper.study.spec import Study
    from sweeper.sweep.progress import Progress


# run_study is long only in its signature: each option with its help text; the body is under 60 lines.
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
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    warm_start: Annotated[
        str | None,
        typer.Option(
            "--warm-start",
            help="Another study (in the same storage) whose finished trials that fit this space inform the "
            "sampler first; they are not counted and never win.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Store the study under this name instead of the file's `name:`: a new study, e.g. to try "
            "other --set values without mixing them into the existing one.",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Run (or resume) a study until it holds --trials trials, each a real fine-tuning run."""
    from sweeper.study import spec as spec_lib

    wants_json(json_)

    spec = load_spec(study, data, set_, epochs, trials)  # a bad file or flag: one line before torch loads
    if name is not None:
        why = spec_lib.name_problem(name.strip())
        if why:
            raise SweeperError(f"--name {why}")
        spec = dataclasses.replace(spec, name=name.strip())

    from sweeper.data import images as data_lib
    from sweeper.results import provenance
    from sweeper.store import record as record_lib
    from sweeper.store import stores, tracking
    from sweeper.sweep import progress as progress_lib
    from sweeper.sweep import session
    from sweeper.sweep import workers as workers_lib

    slots = workers_lib.slots(workers, gpus, workers_lib.cuda_device_count() if gpus else 0)
    _check_writable(storage, tracking_uri)
    with progress_lib.WorkDisplay(show=OUTPUT.progress):  # the test images' full decode check
        scanned = data_lib.scan(spec.data_root, max_pixels=spec.max_pixels, duplicates=spec.duplicates)
    ds = data_lib.hold_out(scanned, spec.val_from_train)
    overrides = {"set": parse_sets(set_), "epochs": epochs, "data": str(data) if data else None, "name": name}
    rec = record_lib.StudyRecord.of(spec, ds, overrides)
    existing = _existing(spec.name, storage)
    if existing is not None:  # refuse a changed definition before anything slow
        record_lib.ensure(existing, rec)
    _warn(preflight(spec, len(ds.classes)))
    # Local SQLite stores: this process is their one writer from before MLflow first touches its store (it
    # creates the schema then); workers started together on them (an array job) take turns, each told why.
    local = [stores.resolve_storage(storage), tracking.resolve_uri(tracking_uri)]
    with stores.single_writer(local, waiting=lambda line: _warn([line])):
        tracker = tracking.MlflowTracker(tracking_uri, spec.name)
        t0 = time.monotonic()
        on = f"GPUs {','.join(g for g in slots if g is not None)}" if gpus else "CPU"
        say(
            f"study {spec.name}: {len(ds.classes)} classes, {len(ds.train)} train / {len(ds.val)} val / "
            f"{len(ds.test)} test images{_skipped(ds)}; "
            f"{len(slots)} worker{'s' if len(slots) > 1 else ''} on {on}; "
            f"storage {stores.display_url(stores.resolve_storage(storage))}; "
            f"MLflow {stores.display_url(tracker.uri)}"
        )
        progress = progress_lib.create(trials, spec.epochs, spec.metric, OUTPUT.progress)
        if existing is not None:  # a resumed study: progress starts from what storage holds
            progress.update(
                record_lib.counts(existing.get_trials(deepcopy=False)), session.best_value(existing)
            )
        ran = provenance.of(spec, rec, existing.get_trials(deepcopy=False) if existing is not None else [])
        with tracker.sweeping():  # the study run is RUNNING until the sweep ends
            tracker.log_study(rec.summary(), provenance.description(ran), provenance.tags(ran))
            session.log_view(spec, tracker)
            prepare = _warm_start(warm_start, spec, storage) if warm_start else None
            threads = workers_lib.cpu_threads(len(slots)) if gpus is None else None
            s = session.Session(spec, ds, storage, tracker, progress, slots, threads)
            st = _sweep(progress, lambda: session.run(s, trials, timeout, rec, prepare))
    hint = _ui_hint(tracker, study, tracking_uri)
    _sweep_ended(st, spec, trials, time.monotonic() - t0, stores.display_url(tracker.uri), hint, json_)


def _sweep_ended(
    st: optuna.Study, spec: Study, trials: int, seconds: float, tracking: str, hint: str, json_: bool
) -> None:
    """run-study's result: the counts and the best trial (or --json's document); exit 1 without a
    complete trial."""
    from sweeper.store import record as record_lib

    c = record_lib.counts(st.get_trials(deepcopy=False))
    if json_:
        _print_json(_sweep_document(st, spec, trials, seconds, tracking))
    else:
        typer.echo(
            f"done in {seconds:.0f}s: {c['counted']}/{trials} trials "
            f"({c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed)"
        )
        _print_best(st, spec)
    say(f"compare trials in the MLflow UI: {hint}")
    if not c["complete"]:  # nothing to refit: a script must not go on as if the sweep had worked
        typer.echo(
            f"error: study {spec.name!r} has no complete trial ({c['pruned']} pruned, {c['fail']} failed); "
            "their reasons are above and in `sweeper show`",
            err=True,
        )
        raise typer.Exit(1)


def _sweep_document(
    st: optuna.Study, spec: Study, trials: int, seconds: float, tracking: str
) -> dict[str, Any]:
    """run-study's result for --json: the counts, the best trial (or the Pareto front), where it is."""
    from sweeper.results import views
    from sweeper.store import record as record_lib

    doc: dict[str, Any] = {
        "study": spec.name,
        "trials": trials,
        "counts": record_lib.counts(st.get_trials(deepcopy=False)),
        "seconds": round(seconds, 1),
        "metric": spec.metric,
        "tracking_uri": tracking,
        "best": None,
    }
    if spec.multi:
        doc["front"] = views.front_view(st, spec)
        return doc
    try:
        best = record_lib.best_trial(st)
    except SweeperError:
        return doc
    doc["best"] = {
        "trial": best.number,
        "value": record_lib.primary(best),
        "epoch": best.user_attrs.get(record_lib.BEST_EPOCH),
        "params": best.params,
    }
    return doc


def _ui_hint(tracker: tracking.MlflowTracker, study: str, tracking_uri: str | None) -> str:
    """Where to compare the trials: a tracking server's own page for the experiment, else ``sweeper ui``
    (which serves a database store, SQLite or PostgreSQL, and opens the same page)."""
    from sweeper.launch import ui
    from sweeper.store import stores

    if tracker.uri.startswith(("http://", "https://")):
        return ui.runs_page(stores.display_url(tracker.uri), tracker.experiment_id)
    given = f" --tracking-uri {stores.display_url(tracking_uri)}" if tracking_uri else ""
    return f"sweeper ui {study}{given}"


def _print_model(uri: str, register: str | None) -> None:
    say(
        f"MLflow model {uri}" + (f", registered as {register!r}" if register else "") + f"; "
        f"`sweeper predict {uri} IMAGES...` or `mlflow models predict -m {uri} --env-manager local`"
    )


def _warm_start(other_name: str, spec: Study, storage: str | None) -> Callable[[optuna.Study], None]:
    """The study-opening step that borrows another study's trials (checked now, added once opened)."""
    from sweeper.store import record as record_lib
    from sweeper.study import starts

    other = record_lib.open_recorded(other_name, storage)
    if other.spec.name == spec.name:
        raise SweeperError(f"--warm-start {other_name}: that is this study; name another study")
    if other.spec.objectives != spec.objectives:  # same directions are not enough: ms are not parameters
        theirs, ours = (", ".join(f"{d} {m}" for m, d in s.objectives) for s in (other.spec, spec))
        raise SweeperError(
            f"--warm-start {other_name}: its objectives are {theirs}, this study's {ours}; only a study "
            "with the same objectives can inform this one"
        )

    def prepare(st: optuna.Study) -> None:
        n = starts.warm_start(st, other.study, spec.space)
        typer.echo(f"warm start: {n} finished trials of {other.spec.name!r} inform the sampler (not counted)")

    return prepare


def _sweep(progress: Progress, run: Callable[[], optuna.Study]) -> optuna.Study:
    """Run the sweep under the live progress; Ctrl-C and SIGTERM (docker stop, preemption: see
    ``app.main``) close the running trials and say how to go on."""
    try:
        with progress:
            return run()
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted: the running trials were closed as failed, not counted, and their params "
            "re-queued (unless a trial's reason says its retries were used up); re-run the same command "
            "to finish the study (they resume from their last epoch)"
        ) from None


def _check_writable(storage: str | None, tracking_uri: str | None) -> None:
    """The folders a sweep writes (checkpoints, local stores) take a file, or one line says so now, not
    after the first trial failed on them. Nothing is made here: a refused run leaves no empty folder."""
    import errno
    import os
    import tempfile

    from sweeper.store import stores, tracking

    places = [Path(os.environ.get("SWEEPER_CHECKPOINTS") or "checkpoints")]
    dbs = [
        stores.sqlite_path(u) for u in (stores.resolve_storage(storage), tracking.resolve_uri(tracking_uri))
    ]
    if dbs[0] is not None and dbs[1] is not None and dbs[0].resolve() == dbs[1].resolve():
        raise SweeperError(
            f"--storage and --tracking-uri both name {dbs[0]}; give each store a database of its own (the "
            "defaults: sweeper.db for --storage, mlruns/mlflow.db for --tracking-uri)"
        )
    places += [db.parent for db in dbs if db is not None]
    for db in dbs:
        if db is not None and db.is_file() and not os.access(db, os.W_OK):
            raise SweeperError(
                f"{db}: the database is read-only; a sweep writes every trial there: make it writable, or "
                "point --storage/--tracking-uri at a writable copy (show, report and doctor only read it)"
            )
    for place in places:  # a folder not there yet is made by the first write: its nearest parent must take it
        nearest = next(p for p in (place.absolute(), *place.absolute().parents) if p.exists())
        try:
            if not nearest.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{nearest} is a file, not a folder")
            tempfile.TemporaryFile(dir=nearest).close()
        except OSError as e:
            raise SweeperError(
                f"cannot write to {place.resolve()}: {e.strerror or e}; run from a writable folder, or point "
                "SWEEPER_CHECKPOINTS, --storage and --tracking-uri somewhere writable"
            ) from None


def _skipped(ds: ImageFolderData) -> str:
    """The files of the data folder that are not images, counted in the start-up line (never fatal)."""
    n = len(ds.skipped)
    return f" ({n} non-image file{'s' if n != 1 else ''} skipped, e.g. {ds.skipped[0]})" if n else ""


def _existing(name: str, storage: str | None) -> Any:
    """The stored study of this name, or None when there is none yet."""
    from sweeper.store import stores

    try:
        return stores.load_existing(name, storage)
    except SweeperError as e:
        if str(e).startswith("no study "):
            return None
        raise


def _print_best(st: optuna.Study, spec: Study) -> None:
    from sweeper.results import views
    from sweeper.store import record as record_lib

    metric = spec.metric
    if spec.multi:
        for line in views.front_lines(views.front_view(st, spec)):
            typer.echo(line)
        return
    try:
        best = record_lib.best_trial(st)
    except SweeperError:
        typer.echo("no complete trial yet")
        return
    typer.echo(
        f"best trial {best.number}: {metric}={record_lib.primary(best):.4f} at epoch "
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
    register: Annotated[
        str | None,
        typer.Option("--register", help="Also register the model in the MLflow Model Registry under NAME."),
    ] = None,
    allow_over_budget: Annotated[
        bool,
        typer.Option(
            "--allow-over-budget", help="Write an ensemble even when its members together exceed max_params."
        ),
    ] = False,
    pick: PickOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Write the submission from the best trial: retrained on train+val, or combined from kept weights."""
    wants_json(json_)
    if set_ and combine != "refit":
        raise SweeperError(f"--set applies to --combine refit only; --combine {combine} retrains nothing")
    out_dir(out)  # before anything loads or trains: a file in the way is one line now, not after the refit
    from sweeper.data import images as data_lib
    from sweeper.store import record as record_lib
    from sweeper.store import tracking
    from sweeper.submit import refit
    from sweeper.sweep.progress import WorkDisplay

    if pick and combine != "refit":
        raise SweeperError(
            f"--pick applies to --combine refit only; --combine {combine} takes the --top best"
        )
    src = record_lib.open_recorded(study, storage)
    with WorkDisplay(show=OUTPUT.progress):  # the test images' full decode check
        ds = data_lib.scan(
            str(data) if data else src.spec.data_root,
            max_pixels=src.spec.max_pixels,
            duplicates=src.spec.duplicates,
        )
    ds = data_lib.hold_out(ds, src.spec.val_from_train)  # the split the trials saw (soup picks on val)
    record_lib.check_classes(src.record, ds.classes, ds.root)
    tracker = tracking.MlflowTracker(tracking_uri, src.spec.name)
    if combine != "refit":
        _warn(src.notes)
        with WorkDisplay(show=OUTPUT.progress):
            summary = refit.combine(src, ds, out, tracker, combine, top, register, allow_over_budget)
        val = f"; val_acc={summary['val_acc']:.4f}" if summary.get("val_acc") is not None else ""
        result(
            f"{combine} of trials {', '.join(map(str, summary['trials']))} ({summary['members']} models"
            f"{val}); wrote {', '.join(str(out / f) for f in summary['files'])}"
        )
        _print_model(summary["model_uri"], register)
        if json_:
            _print_json({"combine": combine, **summary})
        return
    p = refit.plan(src, parse_sets(set_), pick)
    _warn(p.notes)
    value = record_lib.primary(p.trial) or 0.0
    say(
        f"refitting trial {p.trial.number} ({src.spec.metric}={value:.4f}, {p.why}) with its "
        f"recorded config on train+val, {p.stop_epoch} of its {p.cfg.epochs} epochs (its best epoch, on its "
        f"own LR schedule); data {ds.root}"
    )
    for key, value in p.overrides.items():
        say(f"  --set {key}={value} (the trial ran with {p.trial_value(key)!r})")
    with WorkDisplay(epochs=p.stop_epoch, show=OUTPUT.progress):
        summary = refit.refit_best(p, ds, out, tracker, src.spec.name, register)
    result(f"wrote {', '.join(str(out / f) for f in summary['files'])}")
    _print_model(summary["model_uri"], register)
    if json_:
        _print_json({"combine": combine, **summary})


@app.command("confirm")
def confirm(
    study: StudyArg,
    top: Annotated[int, typer.Option("--top", min=1, help="Configurations to re-run: the K best.")] = 3,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Paired seeds per configuration.")] = 3,
    data: DataOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Re-run the top K configurations (and a design's predicted best) with S paired seeds, never pruned,
    and say how far the winner is ahead of the runner-up."""
    from sweeper.data import images as data_lib
    from sweeper.results import confirm as confirm_lib
    from sweeper.store import record as record_lib
    from sweeper.store import tracking
    from sweeper.sweep import progress as progress_lib
    from sweeper.sweep import session
    from sweeper.sweep import workers as workers_lib

    wants_json(json_)
    src = record_lib.open_recorded(study, storage)
    _warn(src.notes)
    spec = confirm_lib.spec_for(src.spec)
    ds = data_lib.scan(
        str(data) if data else spec.data_root, max_pixels=spec.max_pixels, duplicates=spec.duplicates
    )
    ds = data_lib.hold_out(ds, spec.val_from_train)
    record_lib.check_classes(src.record, ds.classes, ds.root)
    planned = confirm_lib.plan(src.study, src.spec, top)
    queued = confirm_lib.enqueue(src.study, planned, seeds)
    c = record_lib.counts(src.study.get_trials(deepcopy=False))
    total = c["counted"] + c["running"] + c["waiting"]
    say(
        f"confirm {spec.name}: {queued} re-runs queued now, {c['waiting']} to run ({len(planned)} x {seeds}; "
        "never pruned)"
    )
    for p in planned:
        say(f"  {p.why}")
    tracker = tracking.MlflowTracker(tracking_uri, spec.name)
    progress = progress_lib.create(total, spec.epochs, spec.metric, OUTPUT.progress)
    slots = workers_lib.slots(workers, gpus, workers_lib.cuda_device_count() if gpus else 0)
    threads = workers_lib.cpu_threads(len(slots)) if gpus is None else None
    s = session.Session(spec, ds, storage, tracker, progress, slots, threads)
    with tracker.sweeping():
        st = _sweep(progress, lambda: session.run(s, total))
    conf = confirm_lib.confirmation(st, spec.direction)
    headline = confirm_lib.headline(conf, spec.metric)
    for line in [*confirm_lib.format_table(conf, spec.metric), headline]:
        result(line or "")
    if json_:
        _print_json(
            {"study": spec.name, "metric": spec.metric, "headline": headline, **dataclasses.asdict(conf)}
        )
