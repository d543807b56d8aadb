"""Credentials in store URLs never reach a printed line or a store: the MLflow server's user and password
go to MLflow's own variables, PostgreSQL URLs are masked wherever sweeper prints them. The study's
experiment is a model-training one with its comparison view, and its study run lives as long as its
sweeps."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeper.errors import SweeperError
from sweeper.store import tracking
from tests.helpers.builders import TINY, write_tiny_study

SECRET = "s3cr3t-Pw"


def test_a_servers_credentials_move_to_mlflows_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert (
        tracking.resolve_uri(f"https://ann:{SECRET}@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    )
    assert (
        os.environ["MLFLOW_TRACKING_USERNAME"] == "ann" and os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET
    )
    assert tracking.resolve_uri("http://mlflow.example:5000") == "http://mlflow.example:5000"


def test_a_refused_login_is_named_and_other_errors_are_not() -> None:
    class OperationalError(Exception):
        pass

    e = OperationalError('connection failed: FATAL:  password authentication failed for user "ann"')
    assert tracking.refused(e) == "the user or password was refused"
    assert "401" in (tracking.refused(Exception("API request to x failed with error code 401 != 200")) or "")
    assert tracking.refused(ValueError("no such table")) is None
    assert issubclass(SweeperError, Exception)


@pytest.mark.slow
@pytest.mark.postgres
def test_no_password_in_any_output_or_store(
    cli, image_folder: Path, pg_server: str, mlflow_url: str, tmp_path: Path
) -> None:
    from tests.helpers.servers import create_database

    storage = create_database(pg_server, "creds").replace("sweeper@", f"sweeper:{SECRET}@")
    tracking_uri = mlflow_url.replace("http://", f"http://ann:{SECRET}@")
    study = write_tiny_study("creds", image_folder)
    args = ["--storage", storage, "--tracking-uri", tracking_uri]
    outputs = [
        cli("run-study", study, "--trials", "1", *TINY, *args),
        cli("refit-best", "creds", "--out", str(tmp_path / "out"), *args),
        cli("show", "creds", "--storage", storage),
        cli("doctor", "creds", *args),
    ]
    pg_tracking = create_database(pg_server, "creds_mlflow")  # a database as the tracking store too
    secret_pg = pg_tracking.replace("sweeper@", f"sweeper:{SECRET}@")
    outputs.append(
        cli("refit-best", "creds", "--out", "out2", "--storage", storage, "--tracking-uri", secret_pg)
    )
    for r in outputs:
        assert r.returncode == 0, r.stdout + r.stderr
        assert SECRET not in r.stdout + r.stderr, r.stdout + r.stderr
    for client in (MlflowClient(mlflow_url), MlflowClient(pg_tracking)):
        runs = client.search_runs([client.get_experiment_by_name("creds").experiment_id])
        assert runs and not [r for r in runs if SECRET in str(r.data.tags) + str(r.data.params)]
    st = optuna.load_study(study_name="creds", storage=storage)
    system = st._storage.get_study_system_attrs(st._study_id)
    kept = str(st.user_attrs) + str(system) + str([t.user_attrs for t in st.get_trials()])
    assert SECRET not in kept


DEAD_PID = "4194300"  # above the default pid_max: never a live process


@pytest.mark.slow
def test_the_experiment_is_model_training_with_the_studys_columns_as_its_view(isolated: Path) -> None:
    tracker = tracking.MlflowTracker(None, "view")
    tracker.log_view(["val_loss"], ["lr_head", "aug.hflip"], ascending=True)
    exp = MlflowClient(tracker.uri).get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI
    view = json.loads(exp.tags["mlflow.sharedViewState.sweeper"])  # MLflow's saved-view envelope
    assert view["name"] == "sweeper: val_loss and searched params" and view["createdAt"] > 0
    state = json.loads(view["state"])
    assert state["selectedColumns"][:3] == ["metrics.`val_loss`", "params.`lr_head`", "params.`aug.hflip`"]
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`val_loss`", True)  # lowest first


@pytest.mark.slow
def test_the_study_run_is_running_while_a_sweep_holds_it_and_the_last_one_closes_it(isolated: Path) -> None:
    tracker = tracking.MlflowTracker(None, "lifecycle")
    client = MlflowClient(tracker.uri)
    host = socket.gethostname()
    with tracker.sweeping():
        run = tracker.study_run_id()
        assert client.get_run(run).info.status == "RUNNING" and client.get_run(run).info.end_time is None
        client.set_tag(run, tracking.SWEEPING + "other", f"{host}:{os.getppid()}")  # a second, live sweep
    assert client.get_run(run).info.status == "RUNNING"  # this one left; the other holds it
    assert tracker.abandoned_study_run() is None  # so the doctor leaves it alone
    client.set_tag(run, tracking.SWEEPING + "other", f"{host}:{DEAD_PID}")  # the other one was killed
    assert tracker.abandoned_study_run().info.run_id == run

    with pytest.raises(KeyboardInterrupt), tracker.sweeping():  # the next sweep, stopped by Ctrl-C
        raise KeyboardInterrupt
    closed = client.get_run(run)
    assert closed.info.status == "KILLED"
    assert not [k for k in closed.data.tags if k.startswith(tracking.SWEEPING)]  # the dead tag went too
    with pytest.raises(ValueError), tracker.sweeping():
        raise ValueError("a bug")
    assert client.get_run(run).info.status == "FAILED"
    with tracker.sweeping():
        time.sleep(0.5)
    info = client.get_run(run).info
    assert info.status == "FINISHED" and time.time() * 1000 - info.end_time < 5000
    assert info.end_time - info.start_time >= 500  # the run spans its sweeps


@pytest.mark.slow
@pytest.mark.postgres
def test_a_wrong_database_password_is_one_line_at_once_for_either_store() -> None:
    """A PostgreSQL tracking store that refuses the login: one line before MLflow's own ten retries (about
    100 s, then a traceback); the study storage likewise. Neither line shows the password."""
    from sweeper.store import stores
    from tests.helpers.servers import cluster

    with cluster(password=SECRET) as c:
        wrong = c.url.replace("sweeper@", "sweeper:wrong-pw@") + "/postgres"
        t0 = time.monotonic()
        with pytest.raises(SweeperError, match=r"tracking store .*: the user or password was refused") as e:
            tracking.MlflowTracker(wrong, "x")
        assert time.monotonic() - t0 < 10 and "wrong-pw" not in str(e.value)
        with pytest.raises(SweeperError, match=r"password authentication failed") as e:
            stores.storage(wrong)
        assert "\n" not in str(e.value) and "wrong-pw" not in str(e.value)
        right = c.url.replace("sweeper@", f"sweeper:{SECRET}@") + "/postgres"
        tracking._check_login(tracking.resolve_uri(right))  # the right password passes


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_describing_one_study_at_once_all_succeed(mlflow_url: str) -> None:
    """MLflow writes a tag as "select, then insert": workers starting together collide on the key of the
    experiment's description, view and dataset rows (a PostgreSQL unique violation, about one start in
    two with four workers). Each write is tried again, and then it updates the row the other made."""
    from concurrent.futures import ThreadPoolExecutor

    for rnd in range(6):
        name = f"race-{rnd}"
        first = tracking.MlflowTracker(mlflow_url, name)
        first.study_run_id()  # the study's run exists; its experiment's tags do not yet
        workers = [tracking.MlflowTracker(mlflow_url, name) for _ in range(6)]

        def start(me: tracking.MlflowTracker, i: int) -> None:
            me.describe_study(f"worker {i}", {"backbones": "resnet18"})
            me.log_view(["val_acc"], ["lr_head"])
            run = MlflowClient(mlflow_url).create_run(me.experiment_id).info.run_id
            me.log_dataset(run, "images", "/data/plants", "d1g3st", {"train": 30})

        with ThreadPoolExecutor(len(workers)) as pool:
            list(pool.map(start, workers, range(len(workers))))  # re-raises a worker's error
        exp = MlflowClient(mlflow_url).get_experiment(first.experiment_id)
        assert exp.tags["mlflow.note.content"] in {f"worker {i}" for i in range(len(workers))}
