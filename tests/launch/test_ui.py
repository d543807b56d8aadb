from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sweeper.errors import SweeperError
from sweeper.launch import ui


def test_server_command_keeps_new_artifacts_beside_a_local_store(tmp_path: Path) -> None:
    cmd = ui.server_command(f"sqlite:///{tmp_path}/mlruns/mlflow.db", 5123)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path / "mlruns" / "artifacts").as_uri()
    remote = ui.server_command("postgresql://u@db/mlflow", 5000)
    assert "--default-artifact-root" not in remote  # a server store keeps its own artifact root


@pytest.mark.parametrize(("level", "quiet"), [("WARNING", True), ("ERROR", True), ("INFO", False)])
def test_the_server_logs_each_request_only_when_verbose(
    monkeypatch: pytest.MonkeyPatch, level: str, quiet: bool
) -> None:
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", level)  # what --quiet, the default and --verbose set
    cmd = ui.server_command("sqlite:///mlruns/mlflow.db", 5000)
    opts = cmd[cmd.index("--uvicorn-opts") + 1] if "--uvicorn-opts" in cmd else ""
    assert ("--no-access-log" in opts and "--log-level warning" in opts) is quiet


def test_free_port_refuses_a_taken_port_and_finds_a_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SweeperError, match=f"port {port} on 127.0.0.1 is in use"):
            ui.free_port(port)
    found = ui.free_port(None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", found))


def test_the_printed_page_is_model_training_with_sweepers_view() -> None:
    page = ui.runs_page("http://127.0.0.1:5000/", "7")
    assert page == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=sweeper"
    )
    assert ui.runs_page("http://h:5000", "7", view=False).endswith("/runs?workflowType=machine_learning")
