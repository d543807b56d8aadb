"""The MLflow UI on a study's own tracking store, so nobody has to find the right ``--backend-store-uri``.

``sweeper ui STUDY`` looks the study's experiment up first (a typo is an error with "did you mean",
not an empty UI), starts ``mlflow server`` on 127.0.0.1 with that store, waits until it answers, and
prints the UI's URL and the experiment's page. The server runs in its own process group so that
stopping sweeper (Ctrl-C or SIGTERM) stops all of its workers too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from sweeper.errors import SweeperError, did_you_mean
from sweeper.store import tracking

HOST = "127.0.0.1"  # local only: the UI shows everything in the store
DEFAULT_PORT = 5000  # MLflow's own default; taken -> a free port
READY_TIMEOUT = 120.0  # seconds for the server to answer /health (imports are slow on a busy machine)


def runs_page(base: str, exp: str, view: bool = True) -> str:
    """The experiment's runs table in the MLflow UI at ``base``, as model training (MLflow 3.17 takes the
    GenAI / Model training toggle from the link, not from the experiment's kind), with sweeper's saved
    view (the study's metrics and searched params as columns, best first) where the experiment has it."""
    shown = f"&viewStateShareKey={tracking.VIEW_KEY}" if view else ""
    return f"{base.rstrip('/')}/#/experiments/{exp}/runs?workflowType=machine_learning{shown}"


def experiment_id(tracking_uri: str, name: str) -> tuple[str, bool]:
    """The id of experiment ``name`` in the store and whether it has sweeper's saved view, or an error
    naming the experiments that exist.

    An experiment without a kind (made by an older sweeper) is marked as model training.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        exp = client.get_experiment_by_name(name)
        names = [] if exp is not None else [e.name for e in client.search_experiments(max_results=1000)]
        if exp is not None and tracking.KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, tracking.KIND_TAG, tracking.MODEL_TRAINING)
    except Exception as e:
        raise SweeperError(
            f"cannot read MLflow store {tracking_uri}: {str(e).splitlines()[0][:300]}"
        ) from None
    if exp is None:
        raise SweeperError(
            f"no MLflow experiment {name!r} in {tracking_uri}{did_you_mean(name, names)}; "
            "run the study first or pass the --tracking-uri it ran with"
        )
    return str(exp.experiment_id), tracking.VIEW_TAG in exp.tags


def free_port(preferred: int | None) -> int:
    """``preferred`` if given (it must be free), else MLflow's default if free, else any free port."""

    def is_free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
            return True

    if preferred is not None:
        if not is_free(preferred):
            raise SweeperError(f"port {preferred} on {HOST} is in use; pick another with --port")
        return preferred
    if is_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_command(tracking_uri: str, port: int) -> list[str]:
    """``mlflow server`` with the store; local SQLite stores keep new artifacts beside the database."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if tracking_uri.startswith("sqlite:///"):
        artifacts = Path(tracking_uri[len("sqlite:///") :]).parent / "artifacts"
        cmd += ["--default-artifact-root", artifacts.resolve().as_uri(), "--no-serve-artifacts"]
    if os.environ.get("MLFLOW_LOGGING_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):  # not --verbose
        cmd += ["--uvicorn-opts", "--log-level warning --no-access-log"]  # no line per HTTP request
    return cmd


def start(tracking_uri: str, port: int, log: IO[Any] | None = None) -> subprocess.Popen[bytes]:
    """Start the server in its own process group; its output goes to ``log`` (default: our stderr).

    MLflow's job runner (GenAI scoring and trace jobs: a worker pool of its own) stays off unless the
    environment turns it on: browsing runs does not need it, and it costs seconds and memory.
    """
    env = {**os.environ}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    try:
        return subprocess.Popen(
            server_command(tracking_uri, port),
            stdin=subprocess.DEVNULL,
            stdout=log or sys.stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    except OSError as e:
        raise SweeperError(f"cannot start mlflow server: {e}") from None


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float = READY_TIMEOUT) -> None:
    """Return once ``url/health`` answers; an error if the server exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SweeperError(
                f"mlflow server exited with code {proc.returncode} before it answered "
                "(its messages are above)"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise SweeperError(f"mlflow server did not answer at {url} within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop the server and its workers: SIGTERM to its process group, SIGKILL after ``grace`` seconds,
    and SIGKILL to whatever of the group outlived its leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _show(announce: Callable[[str], None], url: str, name: str, page: str, open_browser: bool) -> None:
    announce(f"MLflow UI: {url}")
    announce(f"experiment {name!r}: {page}")
    if open_browser:
        import webbrowser

        webbrowser.open(page)


def serve(
    tracking_uri: str,
    name: str,
    port: int | None,
    announce: Callable[[str], None],
    open_browser: bool = False,
) -> int:
    """Run the UI for experiment ``name`` until the server exits or we are stopped; returns an exit code.

    ``announce(line)`` prints the URLs once the server answers; ``open_browser`` then opens the
    experiment's page in the default browser. A tracking URI that is already an MLflow server needs no
    second one: its URLs are printed and nothing is started.
    """
    exp, view = experiment_id(tracking_uri, name)
    if tracking_uri.startswith(("http://", "https://")):  # a tracking server already serves its own UI
        base = tracking_uri.rstrip("/")
        _show(announce, base, name, runs_page(base, exp, view), open_browser)
        return 0
    port = free_port(port)
    url = f"http://{HOST}:{port}"
    proc = start(tracking_uri, port)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        wait_ready(proc, url)
        _show(announce, url, name, runs_page(url, exp, view), open_browser)
        announce("stop with Ctrl-C")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
        signal.signal(signal.SIGTERM, previous)
