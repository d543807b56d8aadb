"""Where a study and its runs live: storage URLs, the Optuna storage, the single writer of local files.

Local SQLite stores get exactly one writer process: :func:`single_writer` takes an exclusive lock
beside each database file, and all workers of that process share it (see :func:`storage` and
``tracking.MlflowTracker``). A second ``run-study`` on the same files is refused up front.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from sweeper.errors import SweeperError

if TYPE_CHECKING:
    import sqlite3

    import sqlalchemy.engine

warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats and retries are what we want

MAX_RETRY = 2
RETRY = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
"""Re-queues a lost trial's params as a new trial, at most twice per original trial."""

T = TypeVar("T")


class StoreDown(SweeperError):
    """A store (the study's database, the MLflow server) stayed unreachable for the whole patience."""


def will_requeue(trial: FrozenTrial) -> bool:
    """Whether :data:`RETRY` queues ``trial``'s params again, or its chain has used its retries."""
    return len(trial.system_attrs.get("retry_history", [])) < MAX_RETRY


def default_storage() -> str:
    return f"sqlite:///{(Path.cwd() / 'sweeper.db').as_posix()}"


def resolve_storage(url: str | None) -> str:
    return with_driver(url or os.environ.get("SWEEPER_STORAGE") or default_storage())


def with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (a dependency); SQLAlchemy alone would want psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def heartbeat_interval() -> int:
    """Seconds between a running trial's heartbeats (``$SWEEPER_HEARTBEAT``)."""
    return int(os.environ.get("SWEEPER_HEARTBEAT", "20"))


def patience() -> float:
    """Seconds a sweep waits for an unreachable store before it stops (``$SWEEPER_STORE_PATIENCE``)."""
    return float(os.environ.get("SWEEPER_STORE_PATIENCE", "300"))


def patiently(what: str, call: Callable[[], T], outage: Callable[[BaseException], bool]) -> T:
    """``call()``, retried while ``outage(error)`` says the store is away, for up to :func:`patience` s.

    The first failure prints one line; the sweep pauses in place (training waits at its next epoch)
    and goes on when the store is back. After the patience, :class:`StoreDown`: one line, no traceback.
    """
    deadline, delay, said = time.monotonic() + patience(), 0.5, False
    while True:
        try:
            result = call()
        except Exception as e:
            if not outage(e):
                raise
            first = _first_line(e)
            if time.monotonic() >= deadline:
                raise StoreDown(
                    f"{what} unreachable for {patience():.0f}s ({first}); the running trials were not "
                    "counted: start it again and re-run the same command"
                ) from None
            if not said:
                say(f"{what} unreachable ({first}); waiting up to {patience():.0f}s for it to come back")
                said = True
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if said:
            say(f"{what} is back; the sweep goes on")
        return result


def _first_line(e: BaseException) -> str:
    """What went wrong, from the innermost cause (Optuna's wrapper says only "during the commit")."""
    while e.__cause__ is not None:
        e = e.__cause__
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


_SAY = threading.Lock()


def say(line: str) -> None:
    """One line on stderr, for what a store does to the sweep (outages, recoveries)."""
    with _SAY:
        print(line, file=sys.stderr, flush=True)


def db_outage(e: BaseException | None) -> bool:
    """A lost connection to a database server, as SQLAlchemy reports it (Optuna wraps it in a
    StorageInternalError); not a bad query."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if read_only(e):
        return False
    while e is not None:
        if isinstance(e, (OperationalError, InterfaceError)):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__
    return False


def read_only(e: BaseException | None) -> bool:
    """A database that cannot be written (a read-only SQLite file or folder): it lasts, so it is no
    outage to wait out."""
    while e is not None:
        if "readonly database" in str(e):
            return True
        e = e.__cause__
    return False


Holds = Literal["optuna", "mlflow", "empty", "missing", "other"]


OPTUNA_TABLES = frozenset(
    {"studies", "study_directions", "trials", "trial_params", "trial_values", "version_info"}
)  # tables only Optuna's storage has (the first it makes, and its core)
MLFLOW_TABLES = frozenset({"experiments", "runs", "metrics", "latest_metrics", "experiment_tags"})


def holds(url: str) -> Holds:
    """What a database holds, read without creating or changing anything: Optuna's tables, MLflow's,
    none (``empty``; ``missing`` for a SQLite file that does not exist), or another system's."""
    from sqlalchemy import create_engine, inspect

    db = sqlite_path(url)
    if db is not None and not db.is_file():
        return "missing"
    engine = create_engine(with_driver(url))
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if tables & MLFLOW_TABLES:
        return "mlflow"
    if tables & OPTUNA_TABLES:  # all of them, or some: another process is making them right now
        return "optuna"
    return "empty" if not tables - {"alembic_version"} else "other"


def other_system(url: str, held: Holds, ours: str) -> SweeperError | None:
    """The one-line refusal when a database given as ``ours`` belongs to another system."""
    names = {"optuna": "an Optuna study storage", "mlflow": "an MLflow tracking store"}
    if held in names and held != ours:
        return SweeperError(
            f"{display_url(url)} is {names[held]}, not {names[ours]}; give each store a database of its "
            "own (the defaults: sweeper.db for --storage, mlruns/mlflow.db for --tracking-uri)"
        )
    if held == "other":
        return SweeperError(
            f"{display_url(url)} holds tables of another program; give sweeper a database of its own"
        )
    return None


def storage(
    url: str | None,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    mark_stale: Callable[[optuna.storages.RDBStorage, int], None] | None = None,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats: a trial whose worker died is failed and its params re-queued.

    SQLite: every transaction takes the write lock as it begins (``BEGIN IMMEDIATE``) and waits for
    it up to 60 s. The default, upgrading a read to a write mid-transaction, is the case SQLite cannot
    wait for: it answers "database is locked" at once when two workers do it together. One process
    writes a local SQLite file (:func:`single_writer` refuses a second one); its workers
    take turns. Servers (PostgreSQL) get a pool that checks connections before use.

    Args:
        on_stale: called for each trial this process finds stale (its worker died); the default only
            re-queues the trial's params with Optuna's RetryHeartbeatStaleTrialCallback.
        mark_stale: called with the storage and a stale trial's id before Optuna fails it (its reason).
        create: make Optuna's tables in a new database; False for read-only commands, which then find
            no study in it (:class:`NoStudies`) and leave it as it was.
    """
    url = resolve_storage(url)
    _check_holds(url, create)
    engine_kwargs: dict[str, Any]
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # seconds a transaction waits for the lock
    else:
        engine_kwargs = {"pool_pre_ping": True, "max_overflow": 20}
    for attempt in range(5):
        try:
            store = _rdb_class(url)(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval(),
                grace_period=int(os.environ.get("SWEEPER_GRACE", "60")),
                heartbeat_stale_trial_callback=on_stale or RETRY,
            )
            store.mark_stale = mark_stale
            break
        except Exception as e:  # bad URL, server down, missing driver
            if _schema_race(e) and attempt < 4:
                time.sleep(0.5 + attempt)
                continue
            raise SweeperError(
                f"cannot open study storage {display_url(url)!r}: {str(e).splitlines()[0][:300]}"
            ) from None
    if url.startswith("sqlite"):
        _begin_immediate(store.engine)
    return store


def _schema_race(e: Exception) -> bool:
    """Two processes made Optuna's tables in one new database together: the loser's retry finds them.

    PostgreSQL answers with a duplicate key in its catalog (IntegrityError) or, when the other's table
    is already there, ``relation ... already exists`` (ProgrammingError); SQLite with "table ... already
    exists" (OperationalError).
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    if isinstance(e, IntegrityError):
        return True
    return isinstance(e, (OperationalError, ProgrammingError)) and "already exists" in str(e)


class NoStudies(SweeperError):
    """A read-only command found no Optuna storage at the URL (nothing was created there)."""


def _check_holds(url: str, create: bool) -> None:
    try:
        held = holds(url)
    except Exception:  # a server down, a bad URL: opening it says so, in one line, just below
        return
    refusal = other_system(url, held, "optuna")
    if refusal is not None:
        raise refusal
    if not create and held in ("empty", "missing"):
        raise NoStudies(f"no study storage at {display_url(url)} (nothing has run there yet)")


def _rdb_class(url: str) -> type[_Storage]:
    return _Storage if url.startswith("sqlite") else _ServerStorage


class _Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, with a heartbeat that outlives store outages and reasons for lost trials.

    Optuna's heartbeat thread ends at the first exception (a database restart), and the trial it beats
    for then looks dead to every other worker, which fails and re-runs it while it still trains. Here a
    failed beat is reported once and tried again at the next interval, until the store is back.
    """

    mark_stale: Callable[[optuna.storages.RDBStorage, int], None] | None = None
    """Called for each stale trial while it is still RUNNING, so that its failure reason is recorded
    before Optuna fails it (a finished trial's attributes cannot change)."""

    _beat_failed = False

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:
            if not self._beat_failed:
                say(f"heartbeat of trial id {trial_id} failed ({type(e).__name__}); retrying every beat")
            self._beat_failed = True
            return
        if self._beat_failed:
            self._beat_failed = False
            say(f"heartbeat of trial id {trial_id} recorded again")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            if self.mark_stale is not None:
                with contextlib.suppress(Exception):  # finished meanwhile, or the store went away
                    self.mark_stale(self, trial_id)
        return stale


class _ServerStorage(_Storage):
    """A database server can restart under a sweep: each storage call waits for it (:func:`patiently`)."""


def _patient_method(name: str) -> Callable[..., Any]:
    plain = getattr(_Storage, name)

    @functools.wraps(plain)
    def method(self: _ServerStorage, *args: Any, **kwargs: Any) -> Any:  # any storage method's arguments
        what = f"study storage {display_url(str(self.engine.url))}"
        return patiently(what, lambda: plain(self, *args, **kwargs), db_outage)

    return method


for _name in (
    "create_new_study",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "_get_stale_trial_ids",
):
    setattr(_ServerStorage, _name, _patient_method(_name))


def _begin_immediate(engine: sqlalchemy.engine.Engine) -> None:
    """SQLAlchemy's recipe for pysqlite: the driver stops issuing BEGIN itself, the engine says
    ``BEGIN IMMEDIATE``; connections opened before the listeners existed are dropped."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: sqlite3.Connection, record: object) -> None:
        dbapi_connection.isolation_level = None

    def on_begin(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()


def load_existing(name: str, storage_url: str | None) -> optuna.Study:
    """A stored study, opened without creating anything (read-only commands, and the check before a run)."""
    try:
        return optuna.load_study(study_name=name, storage=storage(storage_url, create=False))
    except (KeyError, NoStudies):
        raise SweeperError(
            f"no study {name!r} in {display_url(resolve_storage(storage_url))}; "
            f"run `sweeper run-study {name}` first or pass the --storage it ran with"
        ) from None


def display_url(url: str) -> str:
    """A storage or tracking URL fit to print: the password masked (one rule for every URL printed)."""
    from sweeper.store import reach

    try:
        return reach.mask(url)
    except ValueError:  # not parseable as a URL: print the part after the credentials only
        return url.split("@")[-1]


# ---- one writer per local SQLite file -------------------------------------------------------


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other stores and in-memory databases."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    if not db or db == ":memory:":
        return None
    return Path(db).resolve()


@contextlib.contextmanager
def single_writer(urls: list[str], waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock beside every local SQLite store in ``urls`` for the whole sweep.

    SQLite serves one writer at a time; several processes writing to it (Optuna heartbeats, trial
    updates, MLflow metrics) end in "database is locked". So one process per database file writes,
    with all its workers sharing one connection. A second process is refused here, up front, or, given
    ``waiting`` (run-study: a Slurm array or a Kubernetes Job started on SQLite), told so through it
    and made to wait its turn: it then runs what the first left to do, often nothing.
    The lock dies with its process, so a crashed sweep never blocks the next one. Re-entrant within
    a process: a command takes it before it first touches a store (MLflow creates its schema then),
    and the sweep it runs takes it again.
    """
    held: list[Any] = []
    dbs = dict.fromkeys(db for db in map(sqlite_path, urls) if db is not None)  # each file once
    mine = [db for db in dbs if db in _HELD]
    for db in mine:
        _HELD[db] += 1
    try:
        for db in (d for d in dbs if d not in mine):
            db.parent.mkdir(parents=True, exist_ok=True)
            f = _lock(db, waiting)
            f.seek(0)
            f.truncate()
            f.write(f"run-study pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            held.append(f)
            _HELD[db] = 1
        yield
    finally:
        for db in dbs:
            if db in _HELD:
                _HELD[db] -= 1
                if not _HELD[db]:
                    del _HELD[db]
        for f in held:
            f.close()


def _lock(db: Path, waiting: Callable[[str], None] | None) -> Any:
    """The open lock file beside ``db``, locked by this process (see :func:`single_writer`)."""
    import fcntl

    f = open(db.with_name(db.name + ".lock"), "a+")  # noqa: SIM115 - held open for the sweep's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return f
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
    how = (
        "Run more trials at once with --workers K in that one command, or share the study between "
        "processes and machines with PostgreSQL (--storage postgresql://...) and an MLflow server "
        "(--tracking-uri http://...)"
    )
    if waiting is None:
        f.close()
        raise SweeperError(
            f"{db} is being written by another sweep ({holder}); SQLite allows one writer process. {how}"
        )
    waiting(
        f"{db} is being written by another sweep ({holder}); SQLite allows one writer process, so this "
        f"one waits for it to end, then runs what is left (Ctrl-C stops it). {how}"
    )
    try:
        fcntl.flock(f, fcntl.LOCK_EX)
    except BaseException:  # Ctrl-C while waiting
        f.close()
        raise
    return f


_HELD: dict[Path, int] = {}
"""The SQLite files this process holds the writer lock of, and how many holders inside it."""
