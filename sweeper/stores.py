"""Where a study and its runs live: storage URLs, the Optuna storage, the single writer of local files.

Local SQLite stores get exactly one writer process: :func:`single_writer` takes an exclusive lock
beside each database file, and all workers of that process share it (see :func:`storage` and
``tracking.Tracker``). A second ``run-study`` on the same files is refused up front.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from sweeper.errors import SweeperError

warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats and retries are what we want

RETRY = RetryHeartbeatStaleTrialCallback(max_retry=2)
"""Re-queues a lost trial's params as a new trial, at most twice per original trial."""


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


def storage(
    url: str | None, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
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
    """
    from optuna.storages import RDBStorage

    url = resolve_storage(url)
    engine_kwargs: dict[str, Any]
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # seconds a transaction waits for the lock
    else:
        engine_kwargs = {"pool_pre_ping": True, "max_overflow": 20}
    from sqlalchemy.exc import IntegrityError

    for attempt in range(5):
        try:
            store = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval(),
                grace_period=int(os.environ.get("SWEEPER_GRACE", "60")),
                heartbeat_stale_trial_callback=on_stale or RETRY,
            )
            break
        except IntegrityError:  # workers starting together on a new database: one created the schema
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
        except Exception as e:  # bad URL, server down, missing driver
            raise SweeperError(
                f"cannot open study storage {display_url(url)!r}: {str(e).splitlines()[0][:300]}"
            ) from None
    if url.startswith("sqlite"):
        _begin_immediate(store.engine)
    return store


def _begin_immediate(engine: Any) -> None:
    """SQLAlchemy's recipe for pysqlite: the driver stops issuing BEGIN itself, the engine says
    ``BEGIN IMMEDIATE``; connections opened before the listeners existed are dropped."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()


def load_existing(name: str, storage_url: str | None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage(storage_url))
    except KeyError:
        raise SweeperError(
            f"no study {name!r} in {display_url(resolve_storage(storage_url))}; "
            f"run `sweeper run-study {name}` first or pass the --storage it ran with"
        ) from None


def display_url(url: str) -> str:
    """A storage or tracking URL fit to print: the password masked (one rule for every URL printed)."""
    from sweeper import reach

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
def single_writer(urls: list[str]) -> Iterator[None]:
    """Hold an exclusive lock beside every local SQLite store in ``urls`` for the whole sweep.

    SQLite serves one writer at a time; several processes writing to it (Optuna heartbeats, trial
    updates, MLflow metrics) end in "database is locked". So one process per database file writes,
    with all its workers sharing one connection; a second process is refused here, up front.
    The lock dies with its process, so a crashed sweep never blocks the next one.
    """
    import fcntl

    held: list[Any] = []
    dbs = dict.fromkeys(db for db in map(sqlite_path, urls) if db is not None)  # each file once
    try:
        for db in dbs:
            db.parent.mkdir(parents=True, exist_ok=True)
            lock = db.with_name(db.name + ".lock")
            f = open(lock, "a+")  # noqa: SIM115 - held open for the sweep's lifetime
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise SweeperError(
                    f"{db} is being written by another sweep ({holder}); SQLite allows one writer process. "
                    "Run more trials at once with --workers K in that one command, or share the study "
                    "between processes and machines with PostgreSQL (--storage postgresql://...) and an "
                    "MLflow server (--tracking-uri http://...)"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(f"run-study pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            held.append(f)
        yield
    finally:
        for f in held:
            f.close()
