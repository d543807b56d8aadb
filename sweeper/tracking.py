"""MLflow tracking behind one narrow interface: a study is an experiment, a trial is a run.

Everything goes through ``MlflowClient`` with explicit run ids (no global "active run"), so several
trials or workers in one process tree never write to each other's runs. :class:`NullTracker` has the
same methods and records nothing.

Concurrency: a tracking server (``http://``) or PostgreSQL serves any number of workers and machines.
The local SQLite store has one writer process (``workers.single_writer``), and inside it the workers'
calls take turns through one lock, so SQLite never answers "database is locked".
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INFEASIBLE": "FAILED"}
"""A trial's final state -> the MLflow run status it closes with (also kept as tag ``state``).
INFEASIBLE: the loss diverged; Optuna keeps such a trial COMPLETE with a violated constraint."""


def default_uri() -> str:
    """The local store: SQLite metadata at ``mlruns/mlflow.db``, artifacts in ``mlruns/artifacts``."""
    return f"sqlite:///{(Path.cwd() / 'mlruns' / 'mlflow.db').as_posix()}"


def resolve_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()
    for prefix in ("postgresql://", "postgres://"):  # psycopg 3 is the driver installed with sweeper
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri[len(prefix) :]
    return uri


def _artifact_root(uri: str) -> str | None:
    """Local SQLite stores keep artifacts beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


class TrialRun:
    """One MLflow run. Metrics are sent in one batch call per epoch, not one call per value."""

    def __init__(self, client: Any, run_id: str, lock: Any = None) -> None:
        self.client, self.run_id = client, run_id
        self.lock = lock if lock is not None else contextlib.nullcontext()

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        with self.lock:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        with self.lock:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        with self.lock:
            for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
                self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_dir(self, local_dir: Path, artifact_path: str | None = None) -> None:
        with self.lock:
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        with self.lock:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, state: str, reason: str = "") -> None:
        tags = {"state": state}
        if reason:
            tags["reason"] = reason
        self.set_tags(tags)
        with self.lock:
            self.client.set_terminated(self.run_id, status=STATUS[state])


class Tracker:
    """An MLflow experiment (one per study) at ``uri``."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        from mlflow import MlflowClient

        self.uri = resolve_uri(uri)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment = experiment
        self._experiment_id: str | None = None
        # SQLite: this process's workers take turns (one writer); a server handles concurrency itself.
        self.lock: Any = threading.RLock() if self.uri.startswith("sqlite") else contextlib.nullcontext()

    @property
    def experiment_id(self) -> str:
        with self.lock:
            return self._get_experiment_id()

    def _get_experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    root = _artifact_root(self.uri)
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=f"{root}/{self.experiment}" if root else None
                    )
                except Exception:  # another worker created it first
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> TrialRun:
        with self.lock:
            run = self.client.create_run(
                self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
            )
        tr = TrialRun(self.client, run.info.run_id, self.lock)
        tr.log_params(params)
        return tr

    def log_model(self, run_id: str, folder: Path, register: str | None = None) -> str:
        """Log a model folder ``refit-best`` wrote as an MLflow model of run ``run_id`` (an MLflow 3
        LoggedModel, ``pyfunc`` flavour loaded by :mod:`sweeper.predictor`, no pickled code), registered
        as ``register`` when given. Returns its ``models:/`` URI."""
        import mlflow

        from sweeper.predictor import REQUIREMENTS

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with self.lock:
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    loader_module="sweeper.predictor",
                    data_path=str(folder),
                    pip_requirements=REQUIREMENTS,
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
                f"cannot fetch {artifact!r} of MLflow run {run_id} from {self.uri}: "
                f"{str(e).splitlines()[0][:200]}; "
                "pass the --tracking-uri the study ran with"
            ) from None

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A temporary folder whose files are meant to be logged as artifacts."""
        with tempfile.TemporaryDirectory(prefix="sweeper-artifacts-") as d:
            yield Path(d)

    def close_run(self, run_id: str, state: str, reason: str) -> bool:
        """Close a run that is still RUNNING (its worker died); False when it was already closed."""
        with self.lock:
            try:
                running = self.client.get_run(run_id).info.status == "RUNNING"
            except Exception:  # deleted, or from another tracking store
                return False
            if running:
                TrialRun(self.client, run_id, self.lock).end(state, reason)
        return running

    def close_stale_runs(self, trial_states: dict[int, str]) -> int:
        """Close RUNNING runs whose trial has ended (its worker died): they take the trial's state."""
        from mlflow.entities import ViewType

        closed = 0
        with self.lock:
            runs = self.client.search_runs(
                [self.experiment_id],
                "attributes.status = 'RUNNING'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=5000,
            )
            for r in runs:
                number = r.data.tags.get("trial_number")
                state = trial_states.get(int(number)) if number is not None else None
                if state in STATUS:
                    TrialRun(self.client, r.info.run_id, self.lock).end(
                        state, "worker lost; closed by a later worker"
                    )
                    closed += 1
        return closed


class NullTracker:
    """The same interface, recording nothing: for runs without tracking and for tests of other parts."""

    uri = ""

    def start(self, run_name: str, params: dict[str, Any], tags: dict[str, Any]) -> _NullRun:
        return _NullRun()

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="sweeper-artifacts-") as d:
            yield Path(d)

    def close_run(self, run_id: str, state: str, reason: str) -> bool:
        return False

    def log_model(self, run_id: str, folder: Path, register: str | None = None) -> str:
        from sweeper.errors import SweeperError

        raise SweeperError("an MLflow model needs a tracking store (--tracking-uri)")

    def download(self, run_id: str, artifact: str, dst: Path) -> Path:
        from sweeper.errors import SweeperError

        raise SweeperError("trial weights live in MLflow; this needs a tracking store (--tracking-uri)")

    def close_stale_runs(self, trial_states: dict[int, str]) -> int:
        return 0


class _NullRun:
    run_id = ""

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_dir(self, local_dir: Path, artifact_path: str | None = None) -> None: ...
    def log_file(self, path: Path, artifact_path: str | None = None) -> None: ...
    def end(self, state: str, reason: str = "") -> None: ...
