"""The command line as a user meets it: usage errors, --version, --help, shell completion.

Each test runs the installed ``sweeper`` console script on this checkout's code. Usage errors fail while
the arguments are parsed, before any heavy import, so each run takes a fraction of a second.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper import cli
from tests.helpers.processes import REPO


def sweeper_command() -> list[str]:
    """The ``sweeper`` console script next to this interpreter, else on PATH, else ``python -m sweeper``."""
    script = Path(sys.executable).parent / "sweeper"
    if script.is_file():
        return [str(script)]
    found = shutil.which("sweeper")
    return [found] if found else [sys.executable, "-m", "sweeper"]


def sweeper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "PYTHONPATH": pythonpath, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*sweeper_command(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


USAGE_ERRORS = {  # args -> words the error must name
    "unknown option, did you mean": (["run-study", "quickstart", "--trails", "3"], ["--trails", "--trials"]),
    "unknown command, did you mean": (["run-studdy", "quickstart"], ["run-studdy", "'run-study'"]),
    "unknown top-level option": (["--bogus"], ["--bogus"]),
    "missing required option": (["run-study", "quickstart"], ["Missing option", "--trials"]),
    "missing option value": (["run-study", "quickstart", "--trials"], ["--trials", "requires an argument"]),
    "missing argument": (["run-study", "--trials", "3"], ["Missing argument", "STUDY"]),
    "extra argument": (["check", "quickstart", "more"], ["unexpected extra argument", "more"]),
    "trials below 1": (["run-study", "quickstart", "--trials", "0"], ["--trials"]),
    "trials not a number": (["run-study", "quickstart", "--trials", "x"], ["--trials"]),
    "epochs below 1": (["run-study", "quickstart", "--trials", "2", "--epochs", "0"], ["--epochs"]),
    "workers below 1": (["run-study", "quickstart", "--trials", "2", "--workers", "0"], ["--workers"]),
    "timeout zero": (["run-study", "quickstart", "--trials", "2", "--timeout", "0"], ["--timeout", "> 0"]),
    "timeout negative": (["run-study", "quickstart", "--trials", "2", "--timeout", "-5"], ["--timeout"]),
    "bad choice": (["refit-best", "quickstart", "--out", "o", "--combine", "bogus"], ["--combine", "bogus"]),
    "missing --out": (["refit-best", "quickstart"], ["--out"]),
    "show top below 1": (["show", "quickstart", "--top", "0"], ["--top"]),
    "report top below 1": (["report", "quickstart", "--top", "0"], ["--top"]),
    "port out of range": (["ui", "quickstart", "--port", "70000"], ["--port"]),
}


@pytest.mark.slow
@pytest.mark.parametrize(("args", "words"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_error(args: list[str], words: list[str]) -> None:
    r = sweeper(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 5, r.stderr
    if args[-1] != "--trials":  # Click raises "requires an argument" without the usage line
        assert lines[0].startswith("Usage: sweeper"), r.stderr
    error = " ".join(ln for ln in lines if not ln.startswith(("Usage:", "Try ")))
    assert error.startswith("Error: "), r.stderr
    for w in words:
        assert w in error, (w, r.stderr)
    assert not (Path.cwd() / "sweeper.db").exists()  # nothing ran


@pytest.mark.slow
def test_version() -> None:
    r = sweeper("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"sweeper {cli.installed_version()}\n"
    assert r.stdout.split()[1][0].isdigit()


@pytest.mark.slow
def test_help_lists_environment_variables() -> None:
    r = sweeper("--help")
    assert r.returncode == 0, r.stderr
    for name in ["SWEEPER_STORAGE", "MLFLOW_TRACKING_URI", *cli.ENVIRONMENT]:
        assert name in r.stdout, name
    assert "--install-completion" in r.stdout and "--version" in r.stdout
    r = sweeper("run-study", "--help")
    assert r.returncode == 0, r.stderr
    assert "env var: SWEEPER_STORAGE" in r.stdout and "env var: MLFLOW_TRACKING_URI" in r.stdout


def test_every_environment_variable_read_is_documented() -> None:
    read = {
        m
        for p in (REPO / "sweeper").rglob("*.py")
        for m in re.findall(r"\bSWEEPER_[A-Z0-9_]*[A-Z0-9]", p.read_text())
    }
    assert read and read <= set(cli.ENVIRONMENT), read - set(cli.ENVIRONMENT)


@pytest.fixture
def studies_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    d = tmp_path / "studies"
    d.mkdir()
    for name in ("ablation-aug", "ablation-lr", "quickstart"):
        (d / f"{name}.yaml").write_text(f"name: {name}\n")
    (d / "notes.txt").write_text("not a study")
    monkeypatch.setenv("SWEEPER_STUDIES_DIR", str(d))
    return d


def test_complete_study_names(studies_dir: Path) -> None:
    assert cli.complete_study("") == ["ablation-aug", "ablation-lr", "quickstart"]
    assert cli.complete_study("abl") == ["ablation-aug", "ablation-lr"]
    assert cli.complete_study("q") == ["quickstart"]
    assert cli.complete_study("x") == []


@pytest.mark.slow
def test_bash_completes_study_names(studies_dir: Path) -> None:
    env = {"_SWEEPER_COMPLETE": "complete_bash", "COMP_WORDS": "sweeper show abl", "COMP_CWORD": "2"}
    r = sweeper(env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ablation-aug", "ablation-lr"]


@pytest.mark.slow
def test_start_up_imports_nothing_heavy() -> None:
    """``sweeper --help`` stays fast because torch, timm, optuna and mlflow load inside commands."""
    code = (
        "import sys; import sweeper.cli; heavy = {'torch', 'timm', 'optuna', 'mlflow', 'torchvision'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
