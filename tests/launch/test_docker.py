"""docker/: the compose file validates with a real compose client and wires one worker per GPU."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.helpers.processes import REPO


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
    import torch
    import torchvision

    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert f"torch=={torch.__version__.split('+')[0]} " in dockerfile
    assert f"torchvision=={torchvision.__version__.split('+')[0]}" in dockerfile


def test_build_context_leaves_out_environments_data_and_results() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "mlruns", "checkpoints", "data", "out"} <= set(ignored)
