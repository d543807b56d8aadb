"""docker/: the compose file validates with a real compose client and wires one worker per GPU."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO


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


@pytest.mark.slow
def test_compose_file_validates() -> None:
    env = {**os.environ, "STUDY": "ablation-aug", "TRIALS": "40"}
    r = subprocess.run(
        [*compose(), "-f", str(REPO / "docker" / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    services = yaml.safe_load(r.stdout)["services"]
    assert {"postgres", "mlflow"} <= set(services)
    workers = {k: v for k, v in services.items() if k.startswith("worker-gpu")}
    assert len(workers) == 4
    for name, w in workers.items():
        (device,) = w["deploy"]["resources"]["reservations"]["devices"]
        assert device["device_ids"] == [name.removeprefix("worker-gpu")]
        assert w["command"] == ["run-study", "ablation-aug", "--trials", "40", "--data", "/data"]
        assert w["environment"]["SWEEPER_STORAGE"].startswith("postgresql://")
        assert w["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "postgresql+psycopg://" in " ".join(services["mlflow"]["command"])
