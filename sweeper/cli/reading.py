"""Commands that read a study: studies, show, report, ui, check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sweeper.cli.app import (
    OUTPUT,
    DataOpt,
    JsonOpt,
    PickOpt,
    SetOpt,
    StorageOpt,
    StudyArg,
    TrackingOpt,
    _print_json,
    _warn,
    app,
    load_spec,
    out_file,
    result,
    wants_json,
)
from sweeper.errors import SweeperError
from sweeper.study import spec as spec_lib

if TYPE_CHECKING:
    import optuna

    from sweeper.store.record import StudyRecord


@app.command("studies")
def studies(storage: StorageOpt = None, json_: JsonOpt = False) -> None:
    """List the study files and the stored studies: trials (complete/pruned/failed) and best value."""
    import optuna

    from sweeper.results import views
    from sweeper.store import stores

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        store = stores.storage(storage, create=False)  # listing never creates a storage
    except stores.NoStudies:
        store = None
    rows = views.studies_view(store)
    if json_:
        _print_json(rows)
        return
    for line in views.studies_lines(rows):
        typer.echo(line)


@app.command("show")
def show(
    study: StudyArg,
    top: Annotated[int, typer.Option("--top", min=1, help="Rows in the table of best trials.")] = 10,
    ablation: Annotated[
        bool,
        typer.Option(
            "--ablation",
            help="Instead of the top trials: each on/off dimension's effect on the objective, with an "
            "interval, most helpful first (a design study: all fitted jointly, with what it can resolve).",
        ),
    ] = False,
    interactions: Annotated[
        bool,
        typer.Option(
            "--interactions",
            help="With --ablation on a design study: also fit the two-way interactions the runs can "
            "estimate; the aliased ones are named, not estimated.",
        ),
    ] = False,
    storage: StorageOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show what a study ran with, its best trial and the top trials (or, with --ablation, the ablation)."""
    from sweeper.results import views
    from sweeper.store import record as record_lib

    src = record_lib.open_recorded(study, storage)
    _warn(src.notes)
    view = views.study_view(src, top)
    table: list[str] = []
    if ablation:
        view["ablation"], table = _ablation(src.spec, src.study, _n_val(src.record), interactions)
        view.pop("top")
    if json_:
        _print_json(view)
        return
    for line in views.show_lines(view) + table:
        typer.echo(line)


def _n_val(rec: StudyRecord | None) -> int | None:
    """Validation images the study ran with, from its record (the binomial noise floor of val_acc)."""
    return None if rec is None else rec.data.get("images", {}).get("val")


def _ablation(
    spec: spec_lib.Study, st: optuna.Study, n_val: int | None = None, interactions: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """The ablation of a study's on/off dimensions: its rows, and the lines ``show`` prints. A design study
    fits every toggle jointly (:mod:`sweeper.results.effects`); others compare marginal means."""
    import dataclasses

    from sweeper.results import ablation as ablation_lib
    from sweeper.results import effects, effects_table
    from sweeper.results import report as report_lib

    if spec.design is not None:
        trials = st.get_trials(deepcopy=False)
        fit = effects.fit(trials, spec.design, spec.space, spec.metric, spec.direction, n_val, interactions)
        return [dataclasses.asdict(e) for e in fit.effects], ["", *effects_table.format_table(fit)]

    bools = [k for k, d in spec.space.items() if d.kind == "bool"]
    if not bools:
        raise SweeperError(
            f"study {spec.name!r} searches no boolean dimension, so there is nothing "
            "to ablate: the table compares trials with an on/off option on against off"
        )
    ab = ablation_lib.compute(st.get_trials(deepcopy=False), bools, spec.metric, spec.direction)
    head, rows = report_lib.ablation_rows(ab)
    return [dict(zip(head, r, strict=True)) for r in rows], ["", *ablation_lib.format_table(ab)]


@app.command("report")
def report(
    study: StudyArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="The HTML file to write (default: STUDY-report.html here).")
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Trials whose learning curves are drawn.")] = 5,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Write one self-contained HTML report of a study (plots, ablation, trials) and log it to MLflow."""
    from sweeper.results import report as report_lib
    from sweeper.store import record as record_lib
    from sweeper.store import stores, tracking

    wants_json(json_)
    src = record_lib.open_recorded(study, storage)
    spec, st = src.spec, src.study
    _warn(src.notes)
    tracker = tracking.MlflowTracker(tracking_uri, spec.name)
    db = stores.sqlite_path(tracker.uri)
    if db is not None and not os.access(db, os.W_OK):
        raise SweeperError(
            f"{db}: the MLflow database is read-only, and the report is logged to the study's run there; "
            "point --tracking-uri at a writable copy"
        )
    out = out or Path(f"{spec.name}-report.html")
    if out.is_dir():
        out = out / f"{spec.name}-report.html"
    out_file(out)
    run_id = report_lib.write(spec, st, tracker, out, top)
    result(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opens offline); logged to MLflow experiment "
        f"{spec.name!r}, on the study's run {spec.name!r} ({run_id}) in {stores.display_url(tracker.uri)}"
    )
    if json_:
        _print_json(
            {
                "study": spec.name,
                "out": str(out),
                "bytes": out.stat().st_size,
                "run_id": run_id,
                "tracking_uri": stores.display_url(tracker.uri),
            }
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
    from sweeper.launch import ui as ui_lib
    from sweeper.store import tracking

    spec = spec_lib.load(study)
    code = ui_lib.serve(tracking.resolve_uri(tracking_uri), spec.name, port, typer.echo, open_)
    raise typer.Exit(code)


@app.command("check")
def check(study: StudyArg, set_: SetOpt = None, json_: JsonOpt = False, data: DataOpt = None) -> None:
    """Validate a study file (merged over its bases) and print it with its search space; nothing trains.

    With --data, every data check a sweep runs too: the folder layout, every image's header, every image
    fully decoded, the same image in two splits, the class count."""
    spec = load_spec(study, data=data, sets=set_)  # a bad file or flag is one line before torch loads

    from sweeper.sweep import loop
    from sweeper.train import model as model_lib
    from sweeper.train import weights

    checked = _check_data(spec) if data is not None else None
    loop.build_sampler(spec)
    loop.build_pruner(spec)
    for cfg in weights.candidates(spec):
        model_lib.check_backbone(cfg.backbone)
    found = weights.preflight(spec, num_classes=2)  # a head's size hardly moves a budget; data not read
    said = _design_lines(spec, checked)
    if json_:
        _print_json(
            {
                "valid": True,
                "path": str(spec.path),
                "bases": list(spec.bases),
                "study": spec_lib.to_document(spec),
                **({"data": checked} if checked is not None else {}),
                **({"design": said} if said else {}),
            }
        )
        return
    typer.echo(f"study {spec.name} ({spec.path}) is valid")
    for line in found.problems:  # this machine's, not the file's: run-study refuses them
        typer.echo(f"  warning: {line}")
    for line in found.notes:
        typer.echo(f"  note: {line}")
    if spec.bases:
        typer.echo(f"  base: {' <- '.join(spec.bases)} (merged below; this file's keys win)")
    if spec.description:
        typer.echo(f"  {spec.description.strip()}")
    typer.echo(f"  data: {spec.data_root}")
    if checked is not None:
        typer.echo(
            f"  data checked: {checked['classes']} classes, {checked['train']} train / {checked['val']} "
            f"val / {checked['test']} test images, every one decoded; no image in two splits"
        )
    goal = ", ".join(f"{d} {m}" for m, d in spec.objectives)
    front = " (a Pareto front; no pruning: Optuna prunes single objectives only)" if spec.multi else ""
    typer.echo(f"  objective{'s' if spec.multi else ''}: {goal}{front}; {spec.epochs} epochs per trial")
    typer.echo(f"  sampler: {spec.sampler}; pruner: {spec.pruner}")
    for line in said:
        typer.echo(f"  {line}")
    if spec.max_params is not None:
        typer.echo(
            f"  constraints: at most {spec.max_params:,} parameters (over-budget configs are not trained)"
        )
    _echo_values(spec)


def _design_lines(spec: spec_lib.Study, checked: dict[str, int] | None) -> list[str]:
    """What ``check`` says about a design: its runs and blocks, resolution, aliases and power."""
    if spec.design is None:
        return []
    from sweeper.study import design as design_lib
    from sweeper.study import planning

    n_val = checked["val"] if checked is not None and spec.metric == "val_acc" else None
    return design_lib.describe(spec.design, spec.space) + planning.describe(spec.design, spec.space, n_val)


def _check_data(spec: spec_lib.Study) -> dict[str, int]:
    """Every check of the data a sweep makes before it trains, the full decode included (once per
    version of the files: a later run skips what decoded)."""
    from sweeper.data import images as data_lib
    from sweeper.sweep.progress import WorkDisplay

    ds = data_lib.scan(spec.data_root, max_pixels=spec.max_pixels, duplicates=spec.duplicates)
    with WorkDisplay(show=OUTPUT.progress):
        data_lib.check_decodes([*ds.train.files, *ds.val.files])
    ds = data_lib.hold_out(ds, spec.val_from_train)
    return {"classes": len(ds.classes), "train": len(ds.train), "val": len(ds.val), "test": len(ds.test)}


def _echo_values(spec: spec_lib.Study) -> None:
    """``check``'s listing of the fixed values, the searched dimensions and the cells."""
    from sweeper.study import space as space_lib

    typer.echo("  fixed:")
    for k, v in spec.fixed.items():
        typer.echo(f"    {k} = {v}")
    typer.echo("  space:")
    for k, d in spec.space.items():
        typer.echo(f"    {k}: {space_lib.describe(d)}")
    if spec.cells:
        typer.echo("  cells (over fixed):")
        for name, values in spec.cells.items():
            typer.echo(f"    {name}: {', '.join(f'{k} = {v}' for k, v in values.items()) or '(fixed as is)'}")


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
    json_: JsonOpt = False,
) -> None:
    """Check a study's invariants in Optuna and MLflow; exit 1 while problems remain."""
    from sweeper.sweep import doctor as doctor_lib

    try:
        name = spec_lib.load(study).name
    except SweeperError:
        name = study  # a name in storage only (e.g. a study run with --name)
    wants_json(json_)
    lines, left = doctor_lib.check(name, storage, tracking_uri, repair)
    for line in lines:
        result(line)
    result(f"study {name}: " + (f"{left} problem{'s' if left != 1 else ''}" if left else "clean"))
    if json_:
        _print_json({"study": name, "problems": left, "clean": not left, "repaired": repair, "lines": lines})
    raise typer.Exit(1 if left else 0)


@app.command("export-best")
def export_best(
    study: StudyArg,
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
    storage: StorageOpt = None,
    pick: PickOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Print a study file that pins the winner's configuration (runnable with run-study).

    The winner is what refit-best would train: the trial a --pick rule chooses, else the confirmed winner
    when `sweeper confirm` ran, else the best trial."""
    wants_json(json_)
    if out is not None:
        out_file(out)
    import yaml

    from sweeper.results import views
    from sweeper.store import record as record_lib
    from sweeper.submit import refit

    src = record_lib.open_recorded(study, storage)
    _warn(src.notes)
    doc = views.best_document(src, *refit.chosen(src, pick))
    text = f"# exported by `sweeper export-best {study}`\n" + yaml.safe_dump(doc, sort_keys=False)
    if out is not None:
        out.write_text(text)
        result(f"wrote {out}; train it again with `sweeper run-study {out} --trials 1`")
    if json_:  # the study file as a JSON document (YAML's superset reads it as it is)
        _print_json({"study": doc, "out": None if out is None else str(out)})
    elif out is None:
        typer.echo(text, nl=False)


@app.command("fetch-weights")
def fetch_weights(study: StudyArg, set_: SetOpt = None) -> None:
    """Download the pretrained weights of every backbone a study can sample into the hub cache.

    Run it where there is internet, then copy the cache (or share it) to an offline cluster.
    """
    from sweeper.train import weights

    spec = load_spec(study, sets=set_)
    fetched, failed = 0, []
    for cfg in weights.candidates(spec):
        if cfg.weights_file is not None or not cfg.pretrained:
            why = "weights_file" if cfg.weights_file else "not pretrained"
            typer.echo(f"{cfg.backbone}: nothing to fetch ({why})")
            continue
        try:
            path, new = weights.fetch(cfg.backbone)
        except SweeperError as e:
            failed.append(str(e))
            continue
        fetched += new
        size = path.stat().st_size / 1e6
        typer.echo(f"{cfg.backbone}: {'fetched' if new else 'already cached'} {path} ({size:.0f} MB)")
    if failed:
        raise SweeperError(f"{len(failed)} not fetched: {'; '.join(failed)}")
    typer.echo(f"done: {fetched} fetched; every pretrained backbone of {spec.name!r} is in the hub cache")
