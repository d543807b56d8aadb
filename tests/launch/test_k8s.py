"""sweeper/k8s.py and ``sweeper k8s``: the manifests validate against the Kubernetes API schema (offline,
with the schemas bundled in ``kubernetes-validate``), and say what the workers need. No cluster runs here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeper.errors import SweeperError
from sweeper.launch import k8s
from tests.helpers.processes import REPO

kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]' installs kubernetes-validate")
K8S_VERSION = "1.33"  # backoffLimitPerIndex and podFailurePolicy's FailIndex are GA from 1.33


def plan(**kw: Any) -> k8s.Plan:
    base: dict[str, Any] = {"study_name": "birds", "study_text": "name: birds\n", "trials": 40, "workers": 8}
    return k8s.Plan(**{**base, **kw})


def validate(objs: list[dict[str, Any]]) -> None:
    for obj in objs:
        kv.validate(obj, K8S_VERSION, strict=True)  # strict: an unknown or misspelled field is an error


def job(files: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (j,) = files["workers.yaml"]
    return j


def test_every_rendered_object_validates_against_the_api_schema() -> None:
    for p in (plan(), plan(storage="postgresql://sweeper@db.internal:5432/optuna"), plan(uses_data=False)):
        validate([o for objs in k8s.render(p).values() for o in objs])


def test_an_indexed_job_of_one_gpu_workers_on_one_study() -> None:
    spec = job(k8s.render(plan(run_args=("--epochs", "3"))))["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] == 8
    assert spec["backoffLimitPerIndex"] == 3
    pod = spec["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert worker["args"] == [
        *["run-study", "/study/study.yaml", "--trials", "40", "--gpus", "0", "--data", "/data"],
        *["--epochs", "3"],
    ]
    env = {e["name"]: e for e in worker["env"]}
    assert env["SWEEPER_STORAGE"]["value"] == "postgresql://sweeper@postgres:5432/optuna"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "sweeper-db", "key": "password"}
    assert env["SWEEPER_CHECKPOINTS"]["value"].startswith("/work/")  # on the shared volume
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"sweeper-data", "sweeper-work"}


def test_servers_in_the_cluster_or_external() -> None:
    inside = k8s.render(plan())
    kinds = {o["kind"] for objs in inside.values() for o in objs}
    assert {"StatefulSet", "Deployment", "Service", "Job", "PersistentVolumeClaim", "ConfigMap"} <= kinds
    (_, _, deployment) = inside["mlflow.yaml"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--backend-store-uri=postgresql+psycopg://sweeper@postgres:5432/mlflow" in args
    outside = k8s.render(plan(storage="postgresql://u@db:5432/optuna", tracking_uri="http://mlflow.corp:80"))
    assert "postgres.yaml" not in outside and "mlflow.yaml" not in outside
    env = {
        e["name"]: e.get("value") for e in job(outside)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["SWEEPER_STORAGE"] == "postgresql://u@db:5432/optuna"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.corp:80"


def test_a_password_in_a_url_is_refused() -> None:
    with pytest.raises(
        SweeperError, match=r"postgresql://u:\*\*\*@db/optuna: manifests must not hold a password"
    ):
        k8s.render(plan(storage="postgresql://u:hunter2@db/optuna"))


def test_kustomization_lists_every_file() -> None:
    text = k8s.to_text(plan())
    kustomization = yaml.safe_load(text["kustomization.yaml"])
    assert kustomization["resources"] == [n for n in text if n != "kustomization.yaml"]
    assert kustomization["namespace"] == "sweeper"


@pytest.mark.slow
def test_the_shipped_manifests_validate_and_match_the_renderer(cli: Callable) -> None:
    shipped = REPO / "deploy" / "k8s"
    r = cli(
        "k8s", "ablation-aug", "--trials", "40", "--workers", "8", "--out", "fresh",
        "--image", "registry.example.com/sweeper:latest",
        "--mlflow-image", "registry.example.com/sweeper-mlflow:latest",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = yaml.safe_load((shipped / "kustomization.yaml").read_text())["resources"]
    assert sorted(p.name for p in shipped.glob("*.yaml")) == sorted([*names, "kustomization.yaml"])
    for name in names:
        objs = list(yaml.safe_load_all((shipped / name).read_text()))
        validate(objs)
        if name != "study.yaml":  # the study file itself may change; the manifests around it may not drift
            assert (shipped / name).read_text() == (Path("fresh") / name).read_text(), name


@pytest.mark.slow
def test_cli_prints_the_manifests_by_default(cli: Callable) -> None:
    r = cli("k8s", "quickstart", "--trials", "8", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "# --- workers.yaml" in r.stdout and "completionMode: Indexed" in r.stdout
    assert "- --data" not in r.stdout  # the built-in dataset needs no volume path
