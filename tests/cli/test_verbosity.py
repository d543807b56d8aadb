"""--quiet / --verbose and --json's routing of lines, without a process: what each sets and where lines go."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator

import pytest

app_lib = importlib.import_module("sweeper.cli.app")  # the module: sweeper.cli.app is also the Typer app


@pytest.fixture(autouse=True)
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process-wide state these tests change, put back after each."""
    for var in ("MLFLOW_LOGGING_LEVEL", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        monkeypatch.delenv(var, raising=False)
    levels = {name: logging.getLogger(name).level for name in app_lib.NOISY}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    app_lib.OUTPUT.verbosity, app_lib.OUTPUT.json = "normal", False


@pytest.mark.parametrize(
    ("verbosity", "level", "links"),
    [("quiet", "ERROR", "true"), ("normal", "WARNING", "true"), ("verbose", "INFO", None)],
)
def test_library_logs_by_verbosity(verbosity: app_lib.Verbosity, level: str, links: str | None) -> None:
    import os

    app_lib.set_verbosity(verbosity)
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == level  # MLflow reads it when imported, servers inherit it
    assert os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT") == links  # "View run ..." links
    assert {logging.getLogger(n).level for n in ("mlflow", "alembic", "uvicorn.access")} == {
        logging.getLevelName(level)
    }
    assert app_lib.OUTPUT.progress is (verbosity != "quiet")


def test_a_users_own_mlflow_level_stands_unless_a_flag_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "DEBUG")
    app_lib.set_verbosity("normal")
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"
    app_lib.set_verbosity("quiet")
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "ERROR"


def test_lines_go_to_stdout_to_stderr_under_json_and_nowhere_when_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app_lib.say("working")
    app_lib.result("done")
    assert capsys.readouterr() == ("working\ndone\n", "")
    app_lib.wants_json(True)  # stdout is the JSON document's alone
    app_lib.say("working")
    app_lib.result("done")
    assert capsys.readouterr() == ("", "working\ndone\n")
    app_lib.wants_json(False)
    app_lib.OUTPUT.verbosity = "quiet"
    app_lib.say("working")
    app_lib._warn(["a note"])
    app_lib.result("done")
    assert capsys.readouterr() == ("done\n", "")
