"""Stores are only written by the commands that mean to: read-only commands leave a database's bytes as
they were (or create none), and a database of the other system is refused in one line, untouched."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from sweeper.errors import SweeperError
from sweeper.store import stores
from sweeper.study import spec as spec_lib


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_holds_reads_what_a_database_is_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    assert stores.holds(f"sqlite:///{missing}") == "missing" and not missing.exists()
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert stores.holds(f"sqlite:///{tmp_path / 'o.db'}") == "optuna"
    with sqlite3.connect(tmp_path / "m.db") as c:  # the two tables every MLflow store has
        c.execute("create table experiments (experiment_id int)")
        c.execute("create table runs (run_uuid text)")
    assert stores.holds(f"sqlite:///{tmp_path / 'm.db'}") == "mlflow"
    with sqlite3.connect(tmp_path / "x.db") as c:
        c.execute("create table invoices (id int)")
    assert stores.holds(f"sqlite:///{tmp_path / 'x.db'}") == "other"
    with sqlite3.connect(tmp_path / "half.db") as c:  # another process is making Optuna's tables right now
        c.execute("create table studies (study_id int)")
        c.execute("create table alembic_version (version_num text)")
    assert stores.holds(f"sqlite:///{tmp_path / 'half.db'}") == "optuna"


def test_read_only_opening_creates_no_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with pytest.raises(SweeperError, match=r"no study 'x' in .*fresh.db"):
        stores.load_existing("x", url)
    assert not (tmp_path / "fresh.db").exists()


def test_another_systems_database_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with sqlite3.connect(db) as c:
        c.execute("create table experiments (experiment_id int)")
        c.execute("create table runs (run_uuid text)")
    before = digest(db)
    with pytest.raises(SweeperError, match=r"is an MLflow tracking store, not an Optuna study storage"):
        stores.storage(f"sqlite:///{db}")
    assert digest(db) == before


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "", "x" * 200, "with space"])
def test_a_study_name_is_one_safe_path_part(name: str) -> None:
    assert spec_lib.name_problem(name) is not None
    assert spec_lib.name_problem("recipe-000.v2_b") is None


@pytest.mark.slow
def test_read_only_commands_leave_the_stores_bytes_and_refuse_the_mlflow_db(cli, image_folder: Path) -> None:
    from tests.helpers.builders import TINY, write_tiny_study

    study = write_tiny_study("ro", image_folder)
    assert cli("run-study", study, "--trials", "1", *TINY).returncode == 0
    optuna_db, mlflow_db = Path("sweeper.db"), Path("mlruns/mlflow.db")
    before = (digest(optuna_db), digest(mlflow_db))
    reads = (["show", "ro"], ["studies"], ["show", "ro", "--json"], ["export-best", "ro"], ["doctor", "ro"])
    for args in (*reads, ["check", study]):
        r = cli(*args)
        assert r.returncode == 0, (args, r.stderr)
    r = cli("show", "ro", "--storage", f"sqlite:///{mlflow_db.resolve()}")
    assert r.returncode == 2 and "is an MLflow tracking store, not an Optuna study storage" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    other = ["--storage", f"sqlite:///{Path('other.db').resolve()}"]
    r = cli(
        "run-study",
        study,
        "--trials",
        "1",
        *TINY,
        *other,
        "--tracking-uri",
        f"sqlite:///{optuna_db.resolve()}",
    )
    assert r.returncode == 2 and "is an Optuna study storage, not an MLflow tracking store" in r.stderr
    r = cli("run-study", study, "--trials", "2", *TINY, "--name", "../../escape")
    assert r.returncode == 2 and "cannot name a study" in r.stderr
    assert (digest(optuna_db), digest(mlflow_db)) == before
    assert cli("report", "ro").returncode == 0  # logs the report to MLflow, by design; reads the study
    assert digest(optuna_db) == before[0]
    r = cli("studies", "--storage", f"sqlite:///{Path('nowhere.db').resolve()}")
    assert r.returncode == 0 and not Path("nowhere.db").exists()


def test_workers_making_a_new_sqlite_storage_together_all_open_it(tmp_path: Path, monkeypatch) -> None:
    """The loser of the race to make Optuna's tables ("table ... already exists") retries and opens."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first = stores.storage(url)  # the winner: its tables exist now
    optuna.create_study(study_name="s", storage=first)
    from optuna.storages._rdb import models
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    engine = create_engine(url)
    with pytest.raises(OperationalError) as lost:  # what a loser's create_all meets mid-race
        models.BaseModel.metadata.create_all(engine, checkfirst=False)
    assert stores._schema_race(lost.value)
    assert not stores._schema_race(OperationalError("SELECT 1", {}, Exception("disk I/O error")))
    real, tries = stores._rdb_class(url), []

    def losing_once(*args, **kwargs):  # the first attempt loses the race, as a second worker would
        tries.append(1)
        if len(tries) == 1:
            raise lost.value
        return real(*args, **kwargs)

    monkeypatch.setattr(stores, "_rdb_class", lambda _url: losing_once)
    monkeypatch.setattr(stores.time, "sleep", lambda _s: None)
    again = stores.storage(url)
    assert len(tries) == 2 and optuna.get_all_study_names(again) == ["s"]


@pytest.mark.slow
@pytest.mark.postgres
def test_the_loser_of_the_race_on_a_new_postgresql_storage_opens_it(pg_server: str) -> None:
    """PostgreSQL tells a loser whose check came before the winner's tables "relation ... already exists"
    (CI lost a worker to it): a race, tried again, and then the study storage opens."""
    from optuna.storages._rdb import models
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ProgrammingError

    from tests.helpers.servers import create_database

    url = create_database(pg_server, "race_new")
    first = stores.storage(url)
    optuna.create_study(study_name="s", storage=first)
    engine = create_engine(stores.with_driver(url))
    with pytest.raises(ProgrammingError) as lost:  # what a loser's create_all meets mid-race
        models.BaseModel.metadata.create_all(engine, checkfirst=False)
    engine.dispose()
    assert "already exists" in str(lost.value) and stores._schema_race(lost.value)
    assert not stores._schema_race(ProgrammingError("SELECT x", {}, Exception('column "x" does not exist')))
    assert optuna.get_all_study_names(stores.storage(url)) == ["s"]


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a folder, where to mount it read-only): root only; skipped where mounting is not allowed."""
    import subprocess

    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    yield src, ro
    subprocess.run(["umount", "-l", str(ro)], check=False, capture_output=True)


def mount_read_only(src: Path, ro: Path) -> None:
    import subprocess

    for args in (["--bind", str(src), str(ro)], ["-o", "remount,bind,ro", str(ro)]):
        done = subprocess.run(["mount", *args], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount read-only here: {done.stderr.decode().strip()}")


@pytest.mark.slow
def test_a_read_only_store_is_refused_by_a_sweep_and_read_by_doctor(
    read_only_mount: tuple[Path, Path],
) -> None:
    from sweeper.cli import running
    from sweeper.store import tracking
    from sweeper.sweep import doctor

    src, ro = read_only_mount
    optuna.create_study(study_name="ro", storage=stores.storage(f"sqlite:///{src}/sweeper.db"))
    tracking.MlflowTracker(f"sqlite:///{src}/mlflow.db", "ro").start("trial-0000", {}, {}).end("COMPLETE")
    mount_read_only(src, ro)
    url, uri = f"sqlite:///{ro}/sweeper.db", f"sqlite:///{ro}/mlflow.db"
    before = (digest(ro / "sweeper.db"), digest(ro / "mlflow.db"))
    with pytest.raises(SweeperError, match=r"sweeper.db: the database is read-only; a sweep writes"):
        running._check_writable(url, uri)
    assert doctor.check("ro", url, uri, repair=False) == ([], 0)
    lines, left = doctor.check("ro", url, uri, repair=True)
    assert left == 0 and lines == [f"{ro} is read-only (Read-only file system): nothing repaired"]
    assert (digest(ro / "sweeper.db"), digest(ro / "mlflow.db")) == before


def test_doctor_creates_no_store_for_a_missing_study_or_mlflow_store(tmp_path: Path) -> None:
    from sweeper.sweep import doctor

    url, uri = f"sqlite:///{tmp_path}/sweeper.db", f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    with pytest.raises(SweeperError, match=r"no study 'x' in"):
        doctor.check("x", url, uri, repair=True)
    optuna.create_study(study_name="x", storage=stores.storage(url))
    with pytest.raises(SweeperError, match=r"no MLflow store at .*mlflow.db: pass the --tracking-uri"):
        doctor.check("x", url, uri, repair=True)
    assert not (tmp_path / "mlruns").exists()


def test_a_read_only_database_is_no_outage_to_wait_out() -> None:
    from sqlalchemy.exc import OperationalError

    from sweeper.store import tracking

    class MlflowError(Exception):  # the shape of MLflow's wrapper (importing mlflow starts a process)
        error_code = "INTERNAL_ERROR"

    cause = OperationalError("UPDATE runs", {}, Exception("attempt to write a readonly database"))
    wrapped = MlflowError("(sqlite3.OperationalError) ...")
    wrapped.__cause__ = cause
    assert stores.read_only(wrapped) and not tracking.outage(wrapped) and not stores.db_outage(cause)
    lost = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    assert tracking.outage(lost) and not stores.read_only(lost)
