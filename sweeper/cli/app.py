"""The ``sweeper`` application: its options, shared helpers and the console entry point.

Commands are thin: parse options, call the library, print. They live beside this module, one file per
kind of work (:mod:`running`, :mod:`reading`, :mod:`cluster`), and register themselves on :data:`app`.

Heavy libraries (torch, timm, optuna, mlflow) are imported inside commands so ``--help`` is instant.
Exit codes: 0 done; 2 a usage error (Click's usage message) or a :class:`SweeperError` (one line on
stderr); 130 interrupted; 1 a bug (with its traceback).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml

from sweeper.errors import Interrupted, SweeperError, disk_full_line, no_space
from sweeper.study import spec as spec_lib

ENVIRONMENT = {  # every variable sweeper reads; the top-level --help and the README list them
    "SWEEPER_STORAGE": "Optuna storage URL, as --storage (default sqlite:///sweeper.db)",
    "MLFLOW_TRACKING_URI": "MLflow tracking URI, as --tracking-uri (default sqlite:///mlruns/mlflow.db)",
    "SWEEPER_STUDIES_DIR": "where study names are looked up (default ./studies, else the shipped ones)",
    "SWEEPER_DATA_DIR": "generated datasets and decoded-image caches (default ~/.cache/sweeper)",
    "SWEEPER_CACHE_GB": "decoded-image cache budget in GB; 0 turns it off (default half the free space)",
    "SWEEPER_CHECKPOINTS": "trial checkpoints that interrupted trials resume from (default ./checkpoints)",
    "SWEEPER_HEARTBEAT": "seconds between a running trial's heartbeats (default 20)",
    "SWEEPER_GRACE": "seconds without a heartbeat before a trial counts as lost and is redone (default 60)",
    "SWEEPER_SYSTEM_METRICS_S": "seconds between system metrics samples of a trial run (default 10)",
    "SWEEPER_CPU_BF16": "1: CPU trials run in bf16 autocast as on CUDA (for CPUs with AMX; default off)",
    "SWEEPER_STORE_PATIENCE": "seconds a sweep waits for an unreachable store before it stops (default 300)",
    "SWEEPER_PROGRESS_S": "seconds between progress lines when stderr is not a terminal (default 30)",
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

    from sweeper import DISTRIBUTION, __version__

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:
        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sweeper {installed_version()}")
        raise typer.Exit()


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be > 0, got {value:g}")
    return value


Verbosity = Literal["quiet", "normal", "verbose"]


@dataclass
class Output:
    """How much the command says, from the options before it; one per process (this is the CLI)."""

    verbosity: Verbosity = "normal"
    json: bool = False  # the command prints one JSON document on stdout: its other lines go to stderr

    @property
    def progress(self) -> bool:
        return self.verbosity != "quiet"


OUTPUT = Output()

# Library loggers that speak at INFO about their own housekeeping ("Creating initial MLflow database
# tables", "Started monitoring system metrics", alembic's migrations, every HTTP request of the UI).
NOISY = ("mlflow", "alembic", "uvicorn", "uvicorn.access", "uvicorn.error", "httpx", "huey")


def set_verbosity(verbosity: Verbosity) -> None:
    """Library INFO noise off by default, back with --verbose; --quiet keeps errors only. Set through
    the environment too, so that MLflow (configured when first imported) and the servers we start
    (``sweeper ui``'s) hear it; a user's own MLFLOW_LOGGING_LEVEL wins unless a flag is given."""
    import logging

    OUTPUT.verbosity = verbosity
    level = {"quiet": "ERROR", "normal": "WARNING", "verbose": "INFO"}[verbosity]
    if verbosity != "normal" or "MLFLOW_LOGGING_LEVEL" not in os.environ:
        os.environ["MLFLOW_LOGGING_LEVEL"] = level
    if verbosity != "verbose":  # MLflow's "View run ... at: URL" lines on stdout, per run
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in NOISY:
        logging.getLogger(name).setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    if verbosity == "quiet":  # the libraries' Python warnings too (Optuna's, torch's): errors only
        import warnings

        warnings.simplefilter("ignore")


def say(line: str) -> None:
    """A line that tells how the work goes (not its result): stdout, stderr under --json, nothing
    under --quiet."""
    if OUTPUT.verbosity != "quiet":
        typer.echo(line, err=OUTPUT.json)


def result(line: str) -> None:
    """A line of the command's result: stdout, or stderr when --json prints the result instead."""
    typer.echo(line, err=OUTPUT.json)


def wants_json(json_: bool) -> bool:
    """Called by a command with its --json flag: from now on its text goes to stderr."""
    OUTPUT.json = json_
    return json_


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Only results and errors: no progress, notes or library logs."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Also the libraries' INFO logs (MLflow, alembic, uvicorn)."),
    ] = False,
) -> None:
    """The options before the command; --version acts (eagerly) in its callback."""
    OUTPUT.json = False  # each command says for itself (one process may run several, as tests do)
    if quiet and verbose:
        raise SweeperError("--quiet and --verbose contradict each other; give one")
    set_verbosity("quiet" if quiet else "verbose" if verbose else "normal")


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
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Trials at once on this machine, each in its own process. Default: one per --gpus entry, "
        "else 1.",
    ),
]
GpusOpt = Annotated[
    str | None,
    typer.Option("--gpus", help="GPU indexes, e.g. 0,1,2,3: one worker per GPU; its trials see only it."),
]
PickOpt = Annotated[
    str | None,
    typer.Option(
        "--pick",
        help="Choose the trial by a rule instead of the best: filters then orders, e.g. "
        "'val_acc>=0.88,min:latency_ms' (a multi-objective study picks from its Pareto front).",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document instead of text, for scripts.")
]
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
    study: str,
    data: Path | None = None,
    sets: list[str] | None = None,
    epochs: int | None = None,
    trials: int | None = None,
) -> spec_lib.Study:
    """The study with the command line's overrides; ``trials`` (a run's total) is refused when it would
    stop a design short."""
    spec = spec_lib.load(study).with_overrides(parse_sets(sets), epochs, str(data) if data else None)
    if trials is not None and spec.design is not None:
        from sweeper.study import design

        design.check_trials(spec.design, spec.space, trials)
    return spec


def preflight(spec: spec_lib.Study, num_classes: int) -> list[str]:
    """:func:`sweeper.train.weights.ready`, run by a child of the trials' fork server (which imports
    torch and timm while this process opens the stores): this process never imports them."""
    from sweeper.sweep import workers as workers_lib

    notes = workers_lib.in_fork_server("sweeper.train.weights:ready", spec, num_classes)
    assert isinstance(notes, list)
    return notes


def _warn(notes: list[str]) -> None:
    for note in notes:
        if OUTPUT.verbosity != "quiet":
            typer.echo(f"warning: {note}", err=True)


def _print_json(doc: object) -> None:
    """Machine-readable output: one JSON document on stdout (tuples as lists, paths as strings)."""
    import json

    typer.echo(json.dumps(spec_lib.plain(doc), indent=2, default=str))


def out_dir(path: Path, option: str = "--out") -> Path:
    """A folder outputs go to: made now if missing, and checked writable before anything expensive runs."""
    if path.exists() and not path.is_dir():
        raise SweeperError(f"{option} {path}: is a file; name a folder (it is created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        why = e.strerror or e
        raise SweeperError(f"{option} {path}: cannot write there ({why}); name a writable folder") from None
    return path


def out_file(path: Path, option: str = "--out") -> Path:
    """A file an output goes to: not a folder, in a folder that exists (or can be made) and is writable."""
    if path.is_dir():
        raise SweeperError(f"{option} {path}: is a folder; name the file to write, e.g. {path / 'out.csv'}")
    out_dir(path.parent if str(path.parent) else Path("."), option=f"{option} {path}: its folder")
    return path


def _terminate_as_interrupt() -> None:
    """SIGTERM (docker stop, Slurm's scancel, a preemption) acts as Ctrl-C in every command, from its
    first line: a run-study stopped while it checks the study exits 130 with one line, as it would
    mid-sweep."""
    import signal

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


def main() -> None:
    """Console entry point: one-line errors for user mistakes, a traceback only for bugs."""
    _terminate_as_interrupt()
    try:
        rc = app(standalone_mode=False)  # returns typer.Exit's code instead of raising it
        if rc == 130:  # Typer turns a KeyboardInterrupt into a silent exit code 130
            typer.echo("interrupted", err=True)
        sys.exit(rc if isinstance(rc, int) else 0)
    except Interrupted as e:
        typer.echo(f"\n{e}", err=True)
        sys.exit(130)
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
    except typer.TyperException as e:  # usage errors of Typer's bundled Click: usage, hint, Error: ...
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"Error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except Exception as e:  # a full disk, however a library wrapped it, is one line; the rest are bugs
        if not no_space(e):
            raise
        typer.echo(f"error: {disk_full_line(e)}", err=True)
        sys.exit(2)
