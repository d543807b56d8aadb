"""MLflow tracking behind one narrow interface: a study is an experiment, a trial is a run.

Everything goes through ``MlflowClient`` with explicit run ids (no global "active run"), so several
trials or workers in one process tree never write to each other's runs. The sweep sees two protocols,
:class:`Tracker` and :class:`RunLog`: :class:`MlflowTracker` and :class:`TrialRun` record to MLflow,
:class:`NullTracker` and its null run record nothing (mypy checks that both satisfy them). What only
MLflow can do (the doctor's repairs, the report's artifacts) takes an :class:`MlflowTracker`.

Concurrency: a tracking server (``http://``) or PostgreSQL serves any number of workers and machines.
The local SQLite store has one writer process (``workers.single_writer``), and inside it the workers'
calls take turns through one lock, so SQLite never answers "database is locked".
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sweeper.store import stores

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "INFEASIBLE": "FAILED"}
"""A trial's final state -> the MLflow run status it closes with (the state itself is tag ``state``).
PRUNED is FINISHED: the pruner stopping a trial early is the sweep working as designed, and its metrics
up to that epoch are sound; MLflow draws KILLED with the same red cross as FAILED, which made every
pruned trial look broken. INFEASIBLE: the loss diverged; Optuna keeps such a trial COMPLETE with a
violated constraint."""

KIND_TAG = "mlflow.experimentKind"
"""MLflow 3's experiment kind: ``custom_model_development`` opens the experiment as model training (runs,
models) instead of GenAI (traces, evaluations). Newer UIs switch their GenAI / Model training toggle to
it when the experiment opens; 3.17 takes the toggle from the link (``workflowType=machine_learning``)."""
MODEL_TRAINING = "custom_model_development"
VIEW_KEY = "sweeper"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
"""The experiment's saved runs-table view (MLflow's "Views" menu; a link opens it with
``viewStateShareKey=sweeper``): the study's metrics and searched params as columns, best first."""
SWEEPING = "sweeper.sweeping."
"""Tag prefix on the study run: one tag per process sweeping now (``sweeper.sweeping.HOST.PID``)."""


def default_uri() -> str:
    """The local store: SQLite metadata at ``mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``."""
    return f"sqlite:///{(Path.cwd() / 'mlruns' / 'mlflow.db').as_posix()}"


def resolve_uri(uri: str | None) -> str:
    """The tracking URI MLflow is handed. A server's user and password (``http://user:pw@host``) move to
    MLflow's own ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` variables, so that no line MLflow prints (its
    "View run ... at" links) and no tag it records carries them."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    for prefix in ("postgresql://", "postgres://"):  # psycopg 3 is the driver installed with sweeper
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri[len(prefix) :]
    if uri.startswith(("http://", "https://")):
        return _credentials_to_env(uri)
    return uri


def _credentials_to_env(uri: str) -> str:
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(uri)
    if parts.username is None:
        return uri
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    if parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=host).geturl()


def refused(e: BaseException) -> str | None:
    """Why a store refused us (a wrong user or password, no permission), when that is what ``e`` is."""
    text = str(e)
    for cause in (e.__cause__, e.__context__):
        if cause is not None:
            text += " " + str(cause)
    if "password authentication failed" in text or "authentication failed" in text.lower():
        return "the user or password was refused"
    if "error code 401" in text or "UNAUTHENTICATED" in text:
        return "the server asks for a user and password (401): give them as http://USER:PASSWORD@HOST"
    if "error code 403" in text or "PERMISSION_DENIED" in text:
        return "the server refused this user (403)"
    return None


@dataclass(frozen=True)
class ModelLoader:
    """How MLflow loads a logged model: models-from-code, with the code it imports bundled."""

    python_model: Path  # the models-from-code file (it calls ``mlflow.models.set_model``)
    code: tuple[Path, ...]  # bundled into the model and put on sys.path when it loads
    artifact: str  # the name the model folder is logged under (``context.artifacts[artifact]``)
    requirements: tuple[str, ...]  # pinned pip requirement lines written into the model
    metadata: dict[str, str]  # shown with the model (MLmodel ``metadata``): what it takes and returns


KIND = "sweeper.kind"  # what a run is: study (the parent), trial, refit, combine
PROCESS = "sweeper.process"  # HOST:PID of the process that runs it: a RUNNING run of a dead one is stale
STANDALONE = ("refit", "combine")  # runs no trial accounts for: their own process alone closes them


def this_process() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(tag: str) -> bool:
    """Whether the process a ``sweeper.process`` tag names is known to be gone (only on this host)."""
    import socket

    host, _, pid = tag.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


STUDY_KIND = "study"

STAGING = "sweeper-artifacts-"
"""Prefix of the temporary folders a trial's artifacts are staged in: ``sweeper-artifacts-PID-*``."""


@contextlib.contextmanager
def staging(study: str = "") -> Iterator[Path]:
    """A temporary folder whose files are meant to be logged as artifacts; named after this process and
    the study, so that one left by a killed process is recognised (:func:`stale_staging`) and removed
    by that study's next run or its doctor, never by another study's."""
    with tempfile.TemporaryDirectory(prefix=f"{STAGING}{os.getpid()}-{_tag(study)}-") as d:
        yield Path(d)


def _tag(study: str) -> str:
    """A study name as a path-safe part of a folder name (its hash keeps different names apart)."""
    import hashlib

    safe = re.sub(r"[^A-Za-z0-9_.]+", "_", study)[:40]
    return f"{safe}.{hashlib.sha1(study.encode()).hexdigest()[:8]}"


def stale_staging(study: str) -> list[Path]:
    """The staging folders of ``study`` whose process is gone (killed before it could remove them)."""
    out = []
    for d in Path(tempfile.gettempdir()).glob(f"{STAGING}*-{_tag(study)}-*"):
        pid = d.name[len(STAGING) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(d)
    return sorted(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def outage(e: BaseException) -> bool:
    """The tracking server (or its database) is away: a refused or timed-out connection, a 5xx answer."""
    if stores.read_only(e):  # MLflow calls it an INTERNAL_ERROR too, but it lasts
        return False
    text = str(e)
    if text.startswith("API request to") and (
        "failed with exception" in text or "timeout exception" in text or "error code 5" in text
    ):
        return True
    if getattr(e, "error_code", None) in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR"):
        return True
    return stores.db_outage(e)


WRITE_RACE = (
    "UniqueViolation",  # PostgreSQL (psycopg)
    "duplicate key value violates unique constraint",
    "UNIQUE constraint failed",  # SQLite
    "Duplicate entry",  # MySQL
)


def write_race(e: BaseException) -> bool:
    """Another writer inserted the same row at the same moment: MLflow writes a tag as "select, then insert
    or update", so two workers tagging one experiment or run at once can collide on its key."""
    text = str(e) + " " + str(e.__cause__ or "") + " " + str(e.__context__ or "")
    return any(hint in text for hint in WRITE_RACE)


def settled(call: Callable[[], T], tries: int = 5) -> T:
    """``call()``, again after a :func:`write_race`: by then the row exists, so the same write updates it
    (every write sweeper sends through here is an upsert or an idempotent insert)."""
    import random

    for attempt in range(tries):
        try:
            return call()
        except Exception as e:
            if attempt == tries - 1 or not write_race(e):
                raise
            time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))
    raise AssertionError("unreachable")


SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")
"""Tracking URI schemes MLflow serves (the part before ``+driver``); a plain path is a file store."""


def _check_reachable(uri: str) -> None:
    """Fail at once, in one line, on a tracking URI that cannot work: an unknown scheme, or a server that
    does not answer within a few seconds (an outage during a sweep is waited out instead)."""
    from sweeper.errors import SweeperError
    from sweeper.store import reach

    kind = reach.scheme(uri) if "://" in uri else "file"
    if kind not in SCHEMES:
        raise SweeperError(
            f"tracking URI {stores.display_url(uri)!r}: unknown scheme {kind!r}; use http://HOST:5000 "
            "(an MLflow server), sqlite:///PATH/mlflow.db, postgresql://... or a folder"
        )
    if kind in ("http", "https", "postgresql", "mysql", "mssql"):
        reach.check(uri, "the MLflow tracking store")
    if kind in ("postgresql", "mysql", "mssql"):
        _check_login(uri)


def _check_login(uri: str) -> None:
    """One connection to a database tracking store: a refused login is one line now, not a traceback
    after MLflow's own ten retries of it (about 100 s). Other errors are left to MLflow (an outage is
    waited out)."""
    import sqlalchemy

    from sweeper.errors import SweeperError

    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect():
            return
    except Exception as e:
        why = refused(e)
        if why is None:
            return
        raise SweeperError(
            f"the MLflow tracking store {stores.display_url(uri)}: {why}; check the credentials and run "
            "the command again"
        ) from None
    finally:
        engine.dispose()


def _client(uri: str) -> MlflowClient:
    """The MLflow client of ``uri``. MLflow makes its tables when a client first opens a new database,
    and workers started together (a Slurm array, an Indexed Job) race to: the losers see a unique
    violation on alembic_version, a table that already exists, or a schema still being migrated. They
    wait a moment and open it again; the tables are there then."""
    import random

    from mlflow import MlflowClient

    for attempt in range(10):
        try:
            return MlflowClient(tracking_uri=uri)
        except Exception as e:
            if attempt == 9 or not _schema_race(e):
                raise
            time.sleep(0.5 + attempt * random.random())
    raise AssertionError("unreachable")


def _schema_race(e: BaseException) -> bool:
    text = str(e) + " " + str(e.__cause__ or "") + " " + str(e.__context__ or "")
    return any(
        hint in text
        for hint in (
            "alembic_version",
            "already exists",
            "UniqueViolation",
            "DuplicateTable",
            "CommandError",
            "out-of-date database schema",
        )
    )


def _check_not_optuna(uri: str) -> None:
    """An Optuna storage given as the tracking store is refused before MLflow adds its tables to it."""
    if not uri.startswith(("sqlite", "postgresql", "mysql", "mssql")):
        return
    try:
        held = stores.holds(uri)
    except Exception:  # unreachable or odd: MLflow's own first call says so
        return
    if held == "optuna":
        refusal = stores.other_system(uri, held, "mlflow")
        assert refusal is not None
        raise refusal


def _artifact_root(uri: str) -> str | None:
    """Local SQLite stores keep artifacts beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


class RunLog(Protocol):
    """One run's record: what a trial, a refit or an ensemble writes while it runs."""

    run_id: str

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_dir(self, local_dir: Path, artifact_path: str | None = None) -> None: ...
    def log_file(self, path: Path, artifact_path: str | None = None) -> None: ...
    def end(self, state: str, reason: str = "") -> None: ...


class Tracker(Protocol):
    """What a sweep, a refit and retention need of the tracking store (one study's experiment)."""

    uri: str

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> RunLog: ...
    def close_run(self, run_id: str, state: str, reason: str) -> bool: ...
    def log_model(
        self, run_id: str, folder: Path, loader: ModelLoader, register: str | None = None
    ) -> str: ...
    def log_study(
        self, record_doc: dict[str, Any], description: str, tags: dict[str, str] | None = None
    ) -> None: ...
    def system_metrics(self, run_id: str) -> contextlib.AbstractContextManager[None]: ...
    def log_study_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_dataset(
        self, run_id: str, name: str, source: str, digest: str, profile: dict[str, Any]
    ) -> None: ...
    def download(self, run_id: str, artifact: str, dst: Path) -> Path: ...
    def close_stale_runs(
        self, trial_states: dict[int, str], reasons: dict[int, str] | None = None
    ) -> int: ...
    def trial_runs(self) -> list[Any]: ...  # MLflow's Run entities
    def run(self, run_id: str) -> Any: ...  # MLflow's Run entity, or None
    def delete_artifacts(self, run_id: str, suffixes: tuple[str, ...], reason: str) -> bool: ...
    def close_dead_runs(self) -> int: ...
    def sweeping(self) -> contextlib.AbstractContextManager[None]: ...
    def log_view(self, metrics: list[str], params: list[str], ascending: bool = False) -> None: ...


class TrialRun:
    """One MLflow run. Metrics are sent in one batch call per epoch, not one call per value."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        lock: AbstractContextManager[object] | None = None,
        uri: str = "",
    ) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri
        self.lock: AbstractContextManager[object] = lock if lock is not None else contextlib.nullcontext()

    def _call(self, call: Callable[[], T]) -> T:
        """One MLflow call; an unreachable server is waited for (:func:`stores.patiently`)."""

        def locked() -> T:
            with self.lock:
                return settled(call)

        what = f"MLflow tracking store {stores.display_url(self.uri)}"
        try:
            return stores.patiently(what, locked, outage)
        except Exception as e:
            from sweeper.errors import SweeperError

            if stores.read_only(e):
                raise SweeperError(
                    f"{what}: the database is read-only and this command writes to it; make it writable, "
                    "or point --tracking-uri at a writable copy"
                ) from None
            why = refused(e)
            if why is None:
                raise
            raise SweeperError(f"{what}: {why}; check the credentials and run the command again") from None

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self._call(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self._call(lambda: self.client.log_batch(self.run_id, tags=items))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]

        def send(chunk: list[Param]) -> Callable[[], object]:
            return lambda: self.client.log_batch(self.run_id, params=chunk)

        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._call(send(items[i : i + 100]))

    def log_dir(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifacts(self.run_id, str(local_dir), artifact_path))

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, state: str, reason: str = "") -> None:
        tags = {"state": state}
        if reason:
            tags["reason"] = reason
        self.set_tags(tags)
        self._call(lambda: self.client.set_terminated(self.run_id, status=STATUS[state]))


class MlflowTracker:
    """An MLflow experiment (one per study) at ``uri``."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        self.uri = resolve_uri(uri)
        _check_reachable(self.uri)
        _check_not_optuna(self.uri)
        if self.uri.startswith("sqlite:///"):
            from sweeper.store import fresh

            db = Path(self.uri[len("sqlite:///") :])
            db.parent.mkdir(parents=True, exist_ok=True)
            fresh.seed(db)  # a new store: a copy of an empty one
        self.client = _client(self.uri)
        self.experiment = experiment
        self._experiment_id: str | None = None
        self._study_run: str | None = None
        self._sweeping = False  # inside :meth:`sweeping`: a study run made now stays RUNNING
        self._emptied: set[str] = set()  # runs whose weight files this process has already deleted
        self._context: dict[str, str] | None = None
        # SQLite: this process's workers take turns (one writer); a server handles concurrency itself.
        self.lock: AbstractContextManager[object] = (
            threading.RLock() if self.uri.startswith("sqlite") else contextlib.nullcontext()
        )

    def _call(self, call: Callable[[], T]) -> T:
        return TrialRun(self.client, "", self.lock, self.uri)._call(call)

    @property
    def experiment_id(self) -> str:
        return self._call(self._get_experiment_id)

    def _get_experiment_id(self) -> str:
        """The study's experiment, made as a model-training experiment (:data:`KIND_TAG`) when new; one
        made before sweeper set the kind gets it now."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    root = _artifact_root(self.uri)
                    self._experiment_id = self.client.create_experiment(
                        self.experiment,
                        artifact_location=f"{root}/{self.experiment}" if root else None,
                        tags={KIND_TAG: MODEL_TRAINING},
                    )
                    return self._experiment_id
                except Exception:  # another worker created it first
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
            self._experiment_id = str(exp.experiment_id)
            if KIND_TAG not in exp.tags:
                self.client.set_experiment_tag(self._experiment_id, KIND_TAG, MODEL_TRAINING)
        return self._experiment_id

    def log_view(self, metrics: list[str], params: list[str], ascending: bool = False) -> None:
        """The experiment's saved view (:data:`VIEW_TAG`): ``metrics`` then ``params`` as the runs table's
        columns, sorted by the first metric (``ascending`` for a minimized one: best first).

        The MLflow UI shows only Source, Models and Dataset columns until a person picks others, and keeps
        that choice in one browser's storage; a saved view is the one place an experiment carries
        columns for everyone (a JSON envelope that MLflow 3.17 reads uncompressed)."""
        import json

        exp = self.experiment_id
        state = {
            "selectedColumns": [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params],
            "orderByKey": f"metrics.`{metrics[0]}`",
            "orderByAsc": ascending,
        }
        name = f"sweeper: {', '.join(metrics)} and searched params"
        value = json.dumps({"name": name, "createdAt": int(time.time() * 1000), "state": json.dumps(state)})
        self._call(lambda: self.client.set_experiment_tag(exp, VIEW_TAG, value))

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> TrialRun:
        """A new RUNNING run, a child of the study's run (``sweeper.kind`` says what it is: trial by
        default, refit, combine), with MLflow's lineage tags (user, source, git commit). A trial's run
        carries the tag ``trial_number`` from its first instant, so a kill before the trial links it
        (``mlflow_run_id``) still leaves a pair to reconcile."""
        exp = self.experiment_id
        str_tags = {**self.context_tags(), **{k: str(v) for k, v in tags.items()}}
        str_tags.setdefault(KIND, "trial")
        str_tags[PROCESS] = this_process()
        str_tags["mlflow.parentRunId"] = self.study_run_id()
        run = self._call(lambda: self.client.create_run(exp, run_name=run_name, tags=str_tags))
        tr = TrialRun(self.client, run.info.run_id, self.lock, self.uri)
        tr.log_params(params)
        return tr

    def context_tags(self) -> dict[str, str]:
        """MLflow's own lineage tags for this process: user, source (name, type) and git commit."""
        if self._context is None:
            from mlflow.tracking.context.registry import resolve_tags

            self._context = {k: str(v) for k, v in resolve_tags().items() if k != "mlflow.runName"}
        return self._context

    def study_run_id(self) -> str:
        """The study's own run, parent of its trials, refits and ensembles: found by its tag, else made
        (left RUNNING inside :meth:`sweeping`, closed at once otherwise). Workers starting together may
        each make one; each then keeps the oldest it sees, and a run that lost is closed and re-tagged,
        never deleted: another worker that saw it first may already log to it."""
        if self._study_run is None:
            runs = self._study_runs()
            if not runs:
                exp = self.experiment_id
                tags = {**self.context_tags(), KIND: STUDY_KIND, "study": self.experiment}
                made = self._call(lambda: self.client.create_run(exp, run_name=self.experiment, tags=tags))
                runs = self._study_runs()
                first, mine = runs[0].info.run_id, made.info.run_id
                if first != mine:  # another worker's came first
                    self._call(lambda: self.client.set_tag(mine, KIND, "study-duplicate"))
                    self._call(lambda: self.client.set_tag(mine, "sweeper.duplicate_of", first))
                if first != mine or not self._sweeping:
                    self._call(lambda: self.client.set_terminated(mine, status="FINISHED"))
            self._study_run = runs[0].info.run_id
        return self._study_run

    def _study_runs(self) -> list[Any]:
        exp = self.experiment_id
        query = f"tags.`{KIND}` = '{STUDY_KIND}'"
        return self._call(
            lambda: self.client.search_runs([exp], query, order_by=["attributes.start_time ASC"])
        )

    @contextlib.contextmanager
    def sweeping(self) -> Iterator[None]:
        """The study run is RUNNING while any process sweeps the study, and closed by the last one to
        leave: FINISHED when its sweep ended, KILLED by Ctrl-C or SIGTERM, FAILED on an error.

        Each sweeping process holds a tag ``sweeper.sweeping.HOST.PID`` on the study run; leaving drops
        it, and whoever then finds no live one closes the run. A killed process's tag (its pid gone, on
        this host) is dropped by the next sweep or by ``sweeper doctor --repair``. The run's duration
        spans its first sweep's start to its last sweep's end (MLflow keeps one start time)."""
        from sweeper.errors import Interrupted

        self._sweeping = True
        run_id = self.study_run_id()
        key = SWEEPING + re.sub(r"[^\w.\-]", "_", this_process().replace(":", "."))
        self._call(lambda: self.client.set_tag(run_id, key, this_process()))
        self._drop_dead_sweeps(run_id)
        self._call(lambda: self.client.update_run(run_id, status="RUNNING"))
        status = "FAILED"
        try:
            yield
            status = "FINISHED"
        except BaseException as e:
            status = "KILLED" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "FAILED"
            raise
        finally:
            self._sweeping = False
            with contextlib.suppress(Exception):  # a store gone now: the next sweep or doctor closes it
                self._leave_sweep(run_id, key, status)

    def _leave_sweep(self, run_id: str, key: str, status: str) -> None:
        """Drop this process's sweeping tag; close the study run when no live sweep holds it. A sweep that
        joined while it was being closed finds it closed: it is reopened for that one."""
        self._call(lambda: self.client.delete_tag(run_id, key))
        if self._sweeps(run_id)[0]:
            return
        self._call(lambda: self.client.set_terminated(run_id, status=status))
        if self._sweeps(run_id)[0]:
            self._call(lambda: self.client.update_run(run_id, status="RUNNING"))

    def _sweeps(self, run_id: str) -> tuple[list[str], list[str]]:
        """The study run's sweeping tags: (live or on another host, known dead)."""
        run = self._call(lambda: self.client.get_run(run_id))
        tags = {k: v for k, v in run.data.tags.items() if k.startswith(SWEEPING)}
        dead = [k for k, v in tags.items() if process_gone(v)]
        return [k for k in tags if k not in dead], dead

    def _drop_dead_sweeps(self, run_id: str) -> None:
        for key in self._sweeps(run_id)[1]:
            self._call(functools.partial(self.client.delete_tag, run_id, key))

    def abandoned_study_run(self) -> Any:
        """The study run when a killed sweep left it RUNNING (no live sweep holds it), else None. A
        sweep on another host cannot be seen from here: its study run is left alone."""
        runs = self._study_runs()
        if not runs or runs[0].info.status != "RUNNING" or self._sweeps(runs[0].info.run_id)[0]:
            return None
        return runs[0]

    def close_study_run(self, run_id: str, why: str) -> None:
        """Close a study run a killed sweep left RUNNING: KILLED, with ``why``; dead sweeps' tags go."""
        self._drop_dead_sweeps(run_id)
        self._call(lambda: self.client.set_tag(run_id, "reason", why))
        self._call(lambda: self.client.set_terminated(run_id, status="KILLED"))

    def log_study(
        self, record_doc: dict[str, Any], description: str, tags: dict[str, str] | None = None
    ) -> None:
        """What defines the study, on its run: the study as it ran (overrides applied), its record
        (overrides, data fingerprint, versions), and what ran in words (:meth:`describe_study`)."""
        import json

        run_id = self.study_run_id()
        with staging(self.experiment) as d:
            (d / "study.json").write_text(json.dumps(record_doc, indent=2, default=str))
            self._call(lambda: self.client.log_artifacts(run_id, str(d), "study"))
        self.describe_study(description, tags or {})

    def describe_study(self, description: str, tags: dict[str, str]) -> None:
        """The description of the study's experiment and of its run (what ran, then the study file's own
        words), and searchable tags on its run (backbones, data, overrides)."""
        run_id, exp = self.study_run_id(), self.experiment_id
        if description:
            self._call(lambda: self.client.set_experiment_tag(exp, "mlflow.note.content", description))
        from mlflow.entities import RunTag

        note = {"mlflow.note.content": description} if description else {}
        batch = [RunTag(k, v[:5000]) for k, v in {**tags, **note}.items()]
        self._call(lambda: self.client.log_batch(run_id, tags=batch))

    def log_study_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Study-level numbers on the study's run (the best value so far, trials by state), one step per
        counted trial."""
        TrialRun(self.client, self.study_run_id(), self.lock, self.uri).log_metrics(step, metrics)

    def log_dataset(self, run_id: str, name: str, source: str, digest: str, profile: dict[str, Any]) -> None:
        """The data a run trained on, as an MLflow dataset input (name, source path, digest, split sizes)."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name, digest, "local", source, None, json.dumps(profile))
        inp = DatasetInput(ds, [InputTag("mlflow.data.context", "training")])
        self._call(lambda: self.client.log_inputs(run_id, datasets=[inp]))

    def delete_artifacts(self, run_id: str, suffixes: tuple[str, ...], reason: str) -> bool:
        """Delete a run's artifacts whose names end with ``suffixes`` (once: the run is tagged with
        ``reason``); False when there was nothing to do."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if run_id in self._emptied:  # every trial end looks at all trials: no MLflow call for known ones
            return False
        run = self._call(lambda: self.client.get_run(run_id))
        self._emptied.add(run_id)
        if run.data.tags.get("sweeper.weights", "").startswith("deleted"):
            return False
        names = [
            a.path
            for a in self._call(lambda: self.client.list_artifacts(run_id))
            if a.path.endswith(suffixes)
        ]
        repo = get_artifact_repository(run.info.artifact_uri)
        for name in names:
            self._call(functools.partial(repo.delete_artifacts, name))
        TrialRun(self.client, run_id, self.lock, self.uri).set_tags({"sweeper.weights": reason})
        return bool(names)

    @contextlib.contextmanager
    def system_metrics(self, run_id: str) -> Iterator[None]:
        """MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) on the run while the
        block runs, every 10 s, where the ``system`` extra (psutil) is installed; nothing otherwise."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:  # psutil missing: pip install 'sweeper-timm[system]'
            yield
            return
        interval = float(os.environ.get("SWEEPER_SYSTEM_METRICS_S", "10"))
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # metrics about the run must never fail the run
                monitor.finish()
                _publish_last_window(monitor)

    def log_model(self, run_id: str, folder: Path, loader: ModelLoader, register: str | None = None) -> str:
        """Log a model folder ``refit-best`` wrote as an MLflow model of run ``run_id`` (an MLflow 3
        LoggedModel, ``pyfunc`` flavour built by ``loader``'s code, no pickled code), registered
        as ``register`` when given. Returns its ``models:/`` URI."""
        import mlflow

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with self.lock:
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(loader.python_model),
                    code_paths=[str(p) for p in loader.code],
                    artifacts={loader.artifact: str(folder)},
                    pip_requirements=list(loader.requirements),
                    metadata=loader.metadata,
                    registered_model_name=register,
                )
        return str(info.model_uri)

    def latest_model(self, kinds: tuple[str, ...] = ("refit_of_trial", "combine")) -> str:
        """The ``runs:/`` URI of the study's newest finished refit or combination."""
        from sweeper.errors import SweeperError

        with self.lock:
            runs = self.client.search_runs(
                [self.experiment_id],
                "attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
            )
        for r in runs:
            if any(k in r.data.tags for k in kinds):
                return f"runs:/{r.info.run_id}/model"
        raise SweeperError(
            f"study {self.experiment!r} has no finished refit in {self.uri}; run `sweeper refit-best` first"
        )

    def trial_runs(self) -> list[Any]:
        """Every live run of the experiment that belongs to a trial (tag ``trial_number``), oldest first."""
        from mlflow.entities import ViewType

        exp = self.experiment_id
        runs = self._call(
            lambda: self.client.search_runs(
                [exp], "tags.trial_number != ''", run_view_type=ViewType.ACTIVE_ONLY, max_results=50000
            )
        )
        return sorted(runs, key=lambda r: r.info.start_time or 0)

    def run(self, run_id: str) -> Any:
        """The run with this id, or None when it is gone (deleted, or from another store)."""
        try:
            return self._call(lambda: self.client.get_run(run_id))
        except stores.StoreDown:
            raise
        except Exception:
            return None

    def delete_run(self, run_id: str) -> None:
        """Move a run to MLflow's trash (``mlflow gc`` empties it; the UI can restore it)."""
        self._call(lambda: self.client.delete_run(run_id))

    def end_run(self, run_id: str, state: str, reason: str) -> None:
        """Give a run its trial's final state (status and ``state`` tag), whatever it had."""
        TrialRun(self.client, run_id, self.lock, self.uri).end(state, reason)

    def download(self, run_id: str, artifact: str, dst: Path) -> Path:
        """Fetch one artifact of a run (a trial's weights or config) into ``dst``; return its local path."""
        from sweeper.errors import SweeperError

        dst.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line, not progress bars
        try:
            with self.lock:
                return Path(self.client.download_artifacts(run_id, artifact, str(dst)))
        except Exception as e:  # missing artifact, deleted run, store moved
            raise SweeperError(
                f"cannot fetch {artifact!r} of MLflow run {run_id} from {stores.display_url(self.uri)}: "
                f"{str(e).splitlines()[0][:200]}; "
                "pass the --tracking-uri the study ran with"
            ) from None

    staging = staticmethod(staging)

    def close_run(self, run_id: str, state: str, reason: str) -> bool:
        """Close a run that is still RUNNING (its worker died); False when it was already closed."""
        run = self.run(run_id)
        if run is None or run.info.status != "RUNNING":
            return False
        self.end_run(run_id, state, reason)
        return True

    def dead_runs(self) -> list[Any]:
        """RUNNING refit and ensemble runs whose process is gone (killed before it could close them); a
        process on another host cannot be seen from here, and its runs are left alone."""
        exp = self.experiment_id
        query = f"attributes.status = 'RUNNING' and tags.`{PROCESS}` != ''"
        runs = self._call(lambda: self.client.search_runs([exp], query, max_results=50000))
        return [r for r in runs if r.data.tags.get(KIND) in STANDALONE and process_gone(r.data.tags[PROCESS])]

    def close_dead_runs(self) -> int:
        """Close the runs :meth:`dead_runs` finds, as failed, saying why; returns how many."""
        dead = self.dead_runs()
        for r in dead:
            why = f"its process ({r.data.tags[PROCESS]}) ended without closing it (killed)"
            self.end_run(r.info.run_id, "FAIL", why)
        return len(dead)

    def close_stale_runs(self, trial_states: dict[int, str], reasons: dict[int, str] | None = None) -> int:
        """Close RUNNING runs whose trial has ended or does not exist: they take the trial's state, or
        FAIL for a run whose trial was never created (a kill between the two)."""
        closed = 0
        for r in self.trial_runs():
            if r.info.status != "RUNNING":
                continue
            number = int(r.data.tags["trial_number"])
            state = trial_states.get(number, "FAIL")
            if state in STATUS:
                why = (reasons or {}).get(number) or "worker lost; closed by a later worker"
                self.end_run(r.info.run_id, state, why)
                closed += 1
        return closed


def _publish_last_window(monitor: Any) -> None:
    """Log the samples MLflow's monitor took in the window its run ended in: it drops them, so a run
    shorter than one sampling interval (a pruned trial, a fast one) would have no system metrics at all.
    Its first sample is taken as it starts, so there is always one."""
    metrics = monitor.aggregate_metrics()
    if metrics:
        monitor.publish_metrics(metrics)
        monitor.mlflow_logger.flush()


class NullTracker:
    """The same interface, recording nothing: for runs without tracking and for tests of other parts."""

    uri = ""

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> _NullRun:
        return _NullRun()

    staging = staticmethod(staging)

    def close_run(self, run_id: str, state: str, reason: str) -> bool:
        return False

    def log_model(self, run_id: str, folder: Path, loader: ModelLoader, register: str | None = None) -> str:
        from sweeper.errors import SweeperError

        raise SweeperError("an MLflow model needs a tracking store (--tracking-uri)")

    def log_study(
        self, record_doc: dict[str, Any], description: str, tags: dict[str, str] | None = None
    ) -> None: ...

    @contextlib.contextmanager
    def system_metrics(self, run_id: str) -> Iterator[None]:
        yield

    def log_study_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def log_dataset(
        self, run_id: str, name: str, source: str, digest: str, profile: dict[str, Any]
    ) -> None: ...

    def download(self, run_id: str, artifact: str, dst: Path) -> Path:
        from sweeper.errors import SweeperError

        raise SweeperError("trial weights live in MLflow; this needs a tracking store (--tracking-uri)")

    def close_stale_runs(self, trial_states: dict[int, str], reasons: dict[int, str] | None = None) -> int:
        return 0

    def trial_runs(self) -> list[Any]:
        return []

    def run(self, run_id: str) -> Any:
        return None

    def delete_artifacts(self, run_id: str, suffixes: tuple[str, ...], reason: str) -> bool:
        return False

    def close_dead_runs(self) -> int:
        return 0

    def sweeping(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def log_view(self, metrics: list[str], params: list[str], ascending: bool = False) -> None: ...


class _NullRun:
    run_id = ""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_dir(self, local_dir: Path, artifact_path: str | None = None) -> None: ...
    def log_file(self, path: Path, artifact_path: str | None = None) -> None: ...
    def end(self, state: str, reason: str = "") -> None: ...


NO_RUN = _NullRun()
"""The run of a trial whose run is not created yet: writes go nowhere."""

if TYPE_CHECKING:  # mypy holds both trackers, and both runs, to the protocols the sweep uses

    def _conforms(
        real: MlflowTracker, null: NullTracker, run: TrialRun
    ) -> tuple[Tracker, Tracker, RunLog, RunLog]:
        return real, null, run, NO_RUN
