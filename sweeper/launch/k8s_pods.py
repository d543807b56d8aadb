"""The pods of ``sweeper k8s``: containers with their resources, probes and a hardened security context.

Every container runs as a non-root user, cannot gain privileges, has every capability dropped, and
a read-only root filesystem, with emptyDir volumes where its program writes (``/tmp``, PostgreSQL's
socket folder). Requests equal limits, so every pod is in the Guaranteed QoS class (the last evicted) and
a worker's CPUs can be pinned by a static CPU manager. sweeper's two images (docker/Dockerfile,
docker/mlflow.Dockerfile) create the user ``APP_UID``; PostgreSQL's official image runs as its own
``postgres`` user (uid 999), which its entrypoint supports when started as that user.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from sweeper.errors import SweeperError

Obj = dict[str, Any]
SECRET = "sweeper-db"  # kubectl create secret generic sweeper-db --from-literal=password=...
PART_OF = {"app.kubernetes.io/part-of": "sweeper"}
APP_UID = 10001  # the user of sweeper's images; above 10000, so no host user shares it
POSTGRES_UID = 999  # the postgres user of the official image
POSTGRES_IMAGE = "postgres:16"  # the official image, as docker/docker-compose.yml; patch releases follow
PASSWORD_ENV = {  # libpq (psycopg) reads PGPASSWORD, so URLs never carry the password
    "name": "PGPASSWORD",
    "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "password"}},
}
CPU = re.compile(r"(\d+(\.\d{1,3})?|\d+m)")  # 8, 0.5, 500m
MEMORY = re.compile(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?")  # 32Gi, 512Mi
SHM = "8Gi"  # /dev/shm of a worker: DataLoader processes pass batches through it (counts as its memory)
HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass(frozen=True)
class Resources:
    """A container's CPU, memory and GPUs, requested and limited alike (Kubernetes quantities)."""

    cpu: str  # cores: 8, 0.5, 500m
    memory: str  # bytes: 32Gi, 512Mi
    gpus: int = 0  # nvidia.com/gpu

    def block(self) -> Obj:
        amounts: Obj = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            amounts["nvidia.com/gpu"] = self.gpus
        return {"requests": dict(amounts), "limits": dict(amounts)}


def check_resources(r: Resources, cpu_opt: str, memory_opt: str, gpus_opt: str | None) -> None:
    """One-line errors naming the option, for quantities the API server would refuse or a pod that could
    never start."""
    if not CPU.fullmatch(r.cpu) or float(r.cpu.rstrip("m")) == 0:
        raise SweeperError(f"{cpu_opt} {r.cpu!r}: expected CPU cores above 0, as 8, 0.5 or 500m")
    if not MEMORY.fullmatch(r.memory) or float(re.sub(r"[A-Za-z]", "", r.memory)) == 0:
        raise SweeperError(f"{memory_opt} {r.memory!r}: expected a memory size above 0, as 32Gi or 512Mi")
    if gpus_opt and r.gpus < 0:
        raise SweeperError(f"{gpus_opt} must be at least 0, got {r.gpus}")


def pod_security(uid: int) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,  # volumes are made writable by this group
        "fsGroupChangePolicy": "OnRootMismatch",  # not a walk over every file of a full volume per start
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod(uid: int, containers: list[Obj], volumes: list[Obj]) -> Obj:
    return {
        "automountServiceAccountToken": False,  # nothing here talks to the API server
        "securityContext": pod_security(uid),
        "containers": containers,
        "volumes": [*volumes, {"name": "tmp", "emptyDir": {"sizeLimit": "10Gi"}}],
    }


def container(name: str, image: str, resources: Resources, mounts: list[Obj], **run: Any) -> Obj:
    """``run``: what it runs and how it is probed (command, args, env, ports, probes), after its image."""
    return {
        "name": name,
        "image": image,
        **run,
        "imagePullPolicy": "IfNotPresent",  # tags are versions: a node pulls each once
        "resources": resources.block(),
        "securityContext": copy.deepcopy(HARDENED),
        "volumeMounts": [*mounts, {"name": "tmp", "mountPath": "/tmp"}],
    }


def exec_probe(command: list[str], period: int, failures: int) -> Obj:
    return {
        "exec": {"command": command},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def http_probe(path: str, port: int, period: int, failures: int) -> Obj:
    return {
        "httpGet": {  # the Host header must be one the server allows
            "path": path,
            "port": port,
            "httpHeaders": [{"name": "Host", "value": "localhost"}],
        },
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def postgres_pod(resources: Resources, initdb_config: str) -> Obj:
    """PostgreSQL as its image's postgres user; the probes ask over TCP, which the server opens only once
    the first start's initialisation (over the socket) is done."""
    ready = ["pg_isready", "-h", "127.0.0.1", "-U", "sweeper", "-d", "optuna"]
    mounts: list[Obj] = [
        {"name": "pgdata", "mountPath": "/var/lib/postgresql/data"},
        {"name": "initdb", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True},
        {"name": "run", "mountPath": "/var/run/postgresql"},  # its socket and lock file
    ]
    c = container(
        "postgres",
        POSTGRES_IMAGE,
        resources,
        mounts,
        args=["-c", "max_connections=300"],  # about 2 connections per worker, plus MLflow
        env=[
            {"name": "POSTGRES_USER", "value": "sweeper"},
            {"name": "POSTGRES_DB", "value": "optuna"},
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},  # not the volume's root
            {"name": "POSTGRES_PASSWORD", "valueFrom": PASSWORD_ENV["valueFrom"]},
        ],
        ports=[{"containerPort": 5432}],
        startupProbe=exec_probe(ready, 5, 60),  # first start: initdb, up to 5 minutes
        livenessProbe=exec_probe(ready, 10, 6),
        readinessProbe=exec_probe(ready, 5, 2),
    )
    volumes = [
        {"name": "initdb", "configMap": {"name": initdb_config}},
        {"name": "run", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    return pod(POSTGRES_UID, [c], volumes)


def mlflow_pod(image: str, args: list[str], resources: Resources, artifacts_claim: str) -> Obj:
    """The MLflow server as sweeper's user; ``HOME`` is /tmp, the one writable folder besides artifacts."""
    c = container(
        "mlflow",
        image,
        resources,
        [{"name": "artifacts", "mountPath": "/mlartifacts"}],
        args=args,
        env=[PASSWORD_ENV, {"name": "HOME", "value": "/tmp"}],
        ports=[{"containerPort": 5000}],
        startupProbe=http_probe("/health", 5000, 10, 30),  # first start: its tables, up to 5 minutes
        livenessProbe=http_probe("/health", 5000, 20, 3),
        readinessProbe=http_probe("/health", 5000, 10, 3),
    )
    volumes = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": artifacts_claim}}]
    return pod(APP_UID, [c], volumes)


def wait_for_servers(image: str, hosts: list[tuple[str, int]]) -> Obj:
    """An init container that waits until both servers accept connections, so no retry is spent on it."""
    probe = "; ".join(f"socket.create_connection(({h!r}, {p}), 3)" for h, p in hosts)
    command = ["sh", "-c", f'until python -c "import socket; {probe}"; do sleep 2; done']
    return container("wait-for-servers", image, Resources(cpu="100m", memory="128Mi"), [], command=command)


def worker_pod(
    image: str, args: list[str], resources: Resources, servers: list[Obj], hosts: list[tuple[str, int]],
    claims: dict[str, str], study_config: str,
) -> Obj:  # fmt: skip
    """A run-study worker: ``servers`` the URLs' variables, the dataset read-only, the shared work volume,
    the study, /dev/shm in memory."""
    mounts: list[Obj] = [
        {"name": "data", "mountPath": "/data", "readOnly": True},
        {"name": "work", "mountPath": "/work"},
        {"name": "study", "mountPath": "/study", "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},  # DataLoader workers pass batches through it
    ]
    c = container(
        "worker",
        image,
        resources,
        mounts,
        args=args,
        env=[
            *servers,
            PASSWORD_ENV,
            {"name": "SWEEPER_CHECKPOINTS", "value": "/work/checkpoints"},  # shared: a retry resumes anywhere
            {"name": "SWEEPER_DATA_DIR", "value": "/work/cache"},  # decoded images, decoded once for all
            {"name": "HF_HOME", "value": "/work/huggingface"},  # pretrained weights, downloaded once
            {
                "name": "HOME",
                "value": "/tmp",
            },  # torch's, triton's and matplotlib's caches: the root is read-only
        ],
    )
    volumes = [
        {"name": "data", "persistentVolumeClaim": {"claimName": claims["data"], "readOnly": True}},
        {"name": "work", "persistentVolumeClaim": {"claimName": claims["work"]}},
        {"name": "study", "configMap": {"name": study_config}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM}},
    ]
    spec = pod(APP_UID, [c], volumes)
    spec.update(
        restartPolicy="Never",  # a failed pod is replaced by the Job, up to backoffLimitPerIndex times
        terminationGracePeriodSeconds=60,  # SIGTERM: running trials are closed and re-queued
        initContainers=[wait_for_servers(image, hosts)],
    )
    return spec
