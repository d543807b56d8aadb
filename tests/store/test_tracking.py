"""Credentials in store URLs never reach a printed line or a store: the MLflow server's user and password
go to MLflow's own variables, PostgreSQL URLs are masked wherever sweeper prints them."""

from __future__ import annotations

import os
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
    for r in outputs:
        assert r.returncode == 0, r.stdout + r.stderr
        assert SECRET not in r.stdout + r.stderr, r.stdout + r.stderr
    client = MlflowClient(mlflow_url)
    runs = client.search_runs([client.get_experiment_by_name("creds").experiment_id])
    assert runs and not [r for r in runs if SECRET in str(r.data.tags) + str(r.data.params)]
    st = optuna.load_study(study_name="creds", storage=storage)
    system = st._storage.get_study_system_attrs(st._study_id)
    kept = str(st.user_attrs) + str(system) + str([t.user_attrs for t in st.get_trials()])
    assert SECRET not in kept
