"""One study on Kubernetes: manifests for its servers and an Indexed Job whose pods are the workers.

``render`` is a pure function from a :class:`Plan` to files of Kubernetes objects (a kustomize base):
PostgreSQL (a StatefulSet, or an external URL), an MLflow server on it with its artifacts on a volume,
and a Job of K pods, one GPU each, all running the same ``run-study`` against the same storage, so the
study ends with exactly N trials. The Job controller replaces a failed pod (``backoffLimitPerIndex``);
a pod that vanished with its node has its trial failed by the others through Optuna's heartbeats and
re-queued, and the retry resumes from the epoch checkpoint on the shared volume. Passwords live in one
Secret (``sweeper-db``, key ``password``) that the user creates; no manifest holds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sweeper.errors import SweeperError
from sweeper.store import reach

Obj = dict[str, Any]
SECRET = "sweeper-db"  # kubectl create secret generic sweeper-db --from-literal=password=...
LABELS = {"app.kubernetes.io/part-of": "sweeper"}
PASSWORD_ENV = {  # libpq (psycopg) reads PGPASSWORD, so URLs never carry the password
    "name": "PGPASSWORD",
    "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "password"}},
}


@dataclass(frozen=True)
class Plan:
    """What ``sweeper k8s`` renders."""

    study_name: str
    study_text: str  # the study file, shipped to the pods in a ConfigMap
    trials: int
    workers: int  # pods at once, one GPU each
    namespace: str = "sweeper"
    image: str = "sweeper:latest"  # docker/Dockerfile, pushed where the cluster pulls from
    mlflow_image: str = "sweeper-mlflow:latest"  # docker/mlflow.Dockerfile
    storage: str | None = None  # an external PostgreSQL instead of the StatefulSet
    tracking_uri: str | None = None  # an external MLflow server instead of the Deployment
    uses_data: bool = True  # False for a built-in dataset: no --data
    run_args: tuple[str, ...] = ()  # --epochs, --set, passed on to run-study
    retries_per_worker: int = 3  # backoffLimitPerIndex: pod failures tolerated per worker


def meta(plan: Plan, name: str, component: str) -> Obj:
    labels = {**LABELS, "app.kubernetes.io/name": name, "app.kubernetes.io/component": component}
    return {"name": name, "namespace": plan.namespace, "labels": labels}


def pvc(plan: Plan, name: str, size: str, mode: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(plan, name, "storage"),
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": size}}},
    }


def service(plan: Plan, name: str, port: int, headless: bool = False) -> Obj:
    spec: Obj = {"selector": {"app.kubernetes.io/name": name}, "ports": [{"name": name, "port": port}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(plan, name, "server"), "spec": spec}


def postgres(plan: Plan) -> list[Obj]:
    """PostgreSQL for the study (database optuna) and MLflow (database mlflow, made on first start)."""
    initdb = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(plan, "postgres-initdb", "server"),
        "data": {"01-mlflow.sql": "CREATE DATABASE mlflow OWNER sweeper;\n"},
    }
    container = {
        "name": "postgres",
        "image": "postgres:16",
        "args": ["-c", "max_connections=300"],  # about 2 connections per worker, plus MLflow
        "env": [
            {"name": "POSTGRES_USER", "value": "sweeper"},
            {"name": "POSTGRES_DB", "value": "optuna"},
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},  # not the volume's root
            {"name": "POSTGRES_PASSWORD", "valueFrom": PASSWORD_ENV["valueFrom"]},
        ],
        "ports": [{"containerPort": 5432}],
        "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "sweeper", "-d", "optuna"]}},
        "volumeMounts": [
            {"name": "pgdata", "mountPath": "/var/lib/postgresql/data"},
            {"name": "initdb", "mountPath": "/docker-entrypoint-initdb.d"},
        ],
    }
    claim = pvc(plan, "pgdata", "20Gi", "ReadWriteOnce")
    claim["metadata"] = {"name": "pgdata"}
    stateful = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(plan, "postgres", "server"),
        "spec": {
            "serviceName": "postgres",
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "postgres"}},
            "template": {
                "metadata": {"labels": meta(plan, "postgres", "server")["labels"]},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "initdb", "configMap": {"name": "postgres-initdb"}}],
                },
            },
            "volumeClaimTemplates": [claim],
        },
    }
    return [initdb, service(plan, "postgres", 5432, headless=True), stateful]


def mlflow(plan: Plan, storage: str) -> list[Obj]:
    """The MLflow server: runs in PostgreSQL, artifacts on a volume, one replica (the volume is RWO)."""
    backend = urlsplit(storage)._replace(scheme="postgresql+psycopg", path="/mlflow").geturl()
    container = {
        "name": "mlflow",
        "image": plan.mlflow_image,
        "args": [
            "--host=0.0.0.0",
            "--port=5000",
            f"--backend-store-uri={backend}",  # the study's server, database mlflow
            "--artifacts-destination=/mlartifacts",
            f"--allowed-hosts=mlflow:5000,mlflow.{plan.namespace}.svc:5000,localhost:*,127.0.0.1:*",
        ],
        "env": [PASSWORD_ENV],
        "ports": [{"containerPort": 5000}],
        "readinessProbe": {  # the probe's Host header must be one the server allows
            "httpGet": {
                "path": "/health",
                "port": 5000,
                "httpHeaders": [{"name": "Host", "value": "localhost"}],
            },
            "periodSeconds": 10,
        },
        "volumeMounts": [{"name": "artifacts", "mountPath": "/mlartifacts"}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(plan, "mlflow", "server"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}},
            "template": {
                "metadata": {"labels": meta(plan, "mlflow", "server")["labels"]},
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": "artifacts", "persistentVolumeClaim": {"claimName": "mlflow-artifacts"}}
                    ],
                },
            },
        },
    }
    return [pvc(plan, "mlflow-artifacts", "50Gi", "ReadWriteOnce"), service(plan, "mlflow", 5000), deployment]


def urls(plan: Plan) -> tuple[str, str]:
    """The storage and MLflow URLs the workers use: the external ones, else the in-cluster services."""
    for url in (plan.storage, plan.tracking_uri):
        if url and reach.mask(url) != url:
            raise SweeperError(
                f"{reach.mask(url)}: manifests must not hold a password; drop it from the URL and put it "
                f"in the Secret {SECRET!r} (key password), which the pods read as PGPASSWORD"
            )
    storage = plan.storage or "postgresql://sweeper@postgres:5432/optuna"
    return storage, plan.tracking_uri or "http://mlflow:5000"


def study_config(plan: Plan) -> Obj:
    """The study file, mounted into every worker at /study."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(plan, "sweeper-study", "study"),
        "data": {"study.yaml": plan.study_text},
    }


def worker_container(plan: Plan, storage: str, tracking: str) -> Obj:
    args = ["run-study", "/study/study.yaml", "--trials", str(plan.trials), "--gpus", "0"]
    args += ["--data", "/data"] if plan.uses_data else []
    env = [
        {"name": "SWEEPER_STORAGE", "value": storage},
        {"name": "MLFLOW_TRACKING_URI", "value": tracking},
        PASSWORD_ENV,
        {"name": "SWEEPER_CHECKPOINTS", "value": "/work/checkpoints"},  # shared: a retry resumes anywhere
        {"name": "SWEEPER_DATA_DIR", "value": "/work/cache"},  # decoded images, decoded once for all
        {"name": "HF_HOME", "value": "/work/huggingface"},  # pretrained weights, downloaded once
    ]
    return {
        "name": "worker",
        "image": plan.image,
        "args": [*args, *plan.run_args],
        "env": env,
        "resources": {"limits": {"nvidia.com/gpu": 1}},  # the device plugin sets CUDA_VISIBLE_DEVICES
        "volumeMounts": [
            {"name": "data", "mountPath": "/data", "readOnly": True},
            {"name": "work", "mountPath": "/work"},
            {"name": "study", "mountPath": "/study", "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},  # DataLoader workers pass batches through it
        ],
    }


def wait_for_servers(plan: Plan, storage: str, tracking: str) -> Obj:
    """An init container that waits until both servers accept connections, so no retry is spent on it."""
    hosts = [reach.address(storage), reach.address(tracking)]
    probe = "; ".join(f"socket.create_connection(({h!r}, {p}), 3)" for h, p in hosts)
    return {
        "name": "wait-for-servers",
        "image": plan.image,
        "command": ["sh", "-c", f'until python -c "import socket; {probe}"; do sleep 2; done'],
    }


def workers(plan: Plan, storage: str, tracking: str) -> Obj:
    """The Indexed Job: K pods, one GPU each, every one a run-study worker of the same study."""
    pod = {
        "restartPolicy": "Never",  # a failed pod is replaced by the Job, up to backoffLimitPerIndex times
        "terminationGracePeriodSeconds": 60,  # SIGTERM: running trials are closed and re-queued
        "initContainers": [wait_for_servers(plan, storage, tracking)],
        "containers": [worker_container(plan, storage, tracking)],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "sweeper-data", "readOnly": True}},
            {"name": "work", "persistentVolumeClaim": {"claimName": "sweeper-work"}},
            {"name": "study", "configMap": {"name": "sweeper-study"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        ],
    }
    failure_policy = {
        "rules": [
            {  # exit 2 is a configuration error: the same in every retry, so do not retry it
                "action": "FailIndex",
                "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]},
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },  # preempted, drained
        ]
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(plan, "sweeper-workers", "worker"),
        "spec": {
            "completionMode": "Indexed",
            "completions": plan.workers,
            "parallelism": plan.workers,
            "backoffLimitPerIndex": plan.retries_per_worker,
            "podFailurePolicy": failure_policy,
            "template": {
                "metadata": {"labels": meta(plan, "sweeper-workers", "worker")["labels"]},
                "spec": pod,
            },
        },
    }


def render(plan: Plan) -> dict[str, list[Obj]]:
    """The manifests, by file name: a pure function of the plan (``kustomization.yaml`` lists them)."""
    if plan.workers < 1 or plan.trials < 1:
        raise SweeperError(f"--workers and --trials must be at least 1, got {plan.workers} and {plan.trials}")
    storage, tracking = urls(plan)
    files = {
        "namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": plan.namespace}}],
        "volumes.yaml": [
            pvc(plan, "sweeper-data", "100Gi", "ReadWriteMany"),  # the dataset; workers mount it read-only
            pvc(plan, "sweeper-work", "200Gi", "ReadWriteMany"),  # cache, checkpoints, weights
        ],
        "study.yaml": [study_config(plan)],
    }
    if plan.storage is None:
        files["postgres.yaml"] = postgres(plan)
    if plan.tracking_uri is None:
        files["mlflow.yaml"] = mlflow(plan, storage)
    files["workers.yaml"] = [workers(plan, storage, tracking)]
    return files


def kustomization(plan: Plan, files: list[str]) -> Obj:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": plan.namespace,
        "resources": files,
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the study file) as literal blocks, readable in the manifest."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def dump(objs: list[Obj]) -> str:
    return "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=110) for o in objs)


def to_text(plan: Plan) -> dict[str, str]:
    """Every file's YAML, ``kustomization.yaml`` first; ``kubectl apply -k DIR`` applies them."""
    files = render(plan)
    header = f"# Rendered by `sweeper k8s` for study {plan.study_name!r}; see README, Kubernetes.\n"
    text = {"kustomization.yaml": header + dump([kustomization(plan, list(files))])}
    text.update({name: header + dump(objs) for name, objs in files.items()})
    return text


def write(out: Path, text: dict[str, str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for name, body in text.items():
        (out / name).write_text(body)
    return [out / name for name in text]
