"""One study on Kubernetes: manifests for its servers and an Indexed Job whose pods are the workers.

``render`` is a pure function from a :class:`Plan` to files of Kubernetes objects (a kustomize base):
PostgreSQL (a StatefulSet, or an external URL), an MLflow server on it with its artifacts on a volume,
and a Job of K pods, one GPU each, all running the same ``run-study`` against the same storage, so the
study ends with exactly N trials. The Job controller replaces a failed pod (``backoffLimitPerIndex``);
a pod that vanished with its node has its trial failed by the others through Optuna's heartbeats and
re-queued, and the retry resumes from the epoch checkpoint on the shared volume.

Every object is named after the study (``STUDY-postgres``, ``STUDY-workers``, ...) and selected by its
``app.kubernetes.io/instance`` label, so two studies rendered into one namespace share no object. The one
thing a namespace's studies share on purpose is the Secret ``sweeper-db`` (key ``password``), which the
user creates once and no manifest holds; a study that should use another study's servers says so with
``--storage``/``--tracking-uri`` (their in-cluster URLs), and its render then holds no servers.
Pod hardening (non-root, read-only root, resources) is in :mod:`sweeper.launch.k8s_pods`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sweeper import __version__
from sweeper.errors import SweeperError
from sweeper.launch import k8s_pods as pods
from sweeper.launch.k8s_pods import SECRET, Obj, Resources
from sweeper.store import reach

MLFLOW_VERSION = "3.17.2"  # docker/mlflow.Dockerfile's MLFLOW_VERSION: the server image's tag
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # what a Service may be called (RFC 1035)
LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"  # RFC 1123
NAMES = {  # what the API server accepts for each name given as an option
    "--namespace": (re.compile(LABEL), 63, "lower-case letters, digits and '-'"),
    "--storage-class": (re.compile(rf"{LABEL}(\.{LABEL})*"), 253, "lower-case letters, digits, '-' and '.'"),
    "--data-claim": (re.compile(rf"{LABEL}(\.{LABEL})*"), 253, "lower-case letters, digits, '-' and '.'"),
}
PREFIX_MAX = 30  # STUDY-postgres-initdb and the pods' generated names stay within 63 characters
IMAGE = f"sweeper:{__version__}"  # docker/Dockerfile, tagged with the version it installs
MLFLOW_IMAGE = f"sweeper-mlflow:{MLFLOW_VERSION}"  # docker/mlflow.Dockerfile
WORKER = Resources(cpu="8", memory="32Gi", gpus=1)  # one fine-tuning trial: DataLoader workers, one GPU
SERVER = Resources(cpu="1", memory="2Gi")  # PostgreSQL or MLflow for one study's workers


@dataclass(frozen=True)
class Plan:
    """What ``sweeper k8s`` renders."""

    study_name: str
    study_text: str  # the study merged over its bases (study.files.merged_text), in a ConfigMap
    trials: int
    workers: int  # pods at once
    namespace: str = "sweeper"
    image: str = IMAGE  # pushed where the cluster pulls from
    mlflow_image: str = MLFLOW_IMAGE
    storage: str | None = None  # an external PostgreSQL instead of the StatefulSet
    tracking_uri: str | None = None  # an external MLflow server instead of the Deployment
    uses_data: bool = True  # False for a built-in dataset: no --data
    run_args: tuple[str, ...] = ()  # --epochs, --set, passed on to run-study
    retries_per_worker: int = 3  # backoffLimitPerIndex: pod failures tolerated per worker
    worker: Resources = field(default=WORKER)  # requests = limits: Guaranteed QoS, evicted last
    server: Resources = field(default=SERVER)  # each of PostgreSQL and MLflow
    storage_class: str | None = None  # of the ReadWriteMany claims; None: the cluster's default
    data_claim: str | None = None  # an existing claim with the dataset, shared by studies

    @property
    def prefix(self) -> str:
        return object_prefix(self.study_name)

    def name(self, part: str) -> str:
        return f"{self.prefix}-{part}"


def object_prefix(study: str) -> str:
    """The study's name as the first part of its objects' names: a DNS label, lower case. A name that
    had to change (upper case, ``_``, ``.``, too long) gets a hash of the original, so two studies never
    meet on one prefix."""
    name = re.sub(r"[^a-z0-9]+", "-", study.lower()).strip("-")
    name = name if name[:1].isalpha() else f"s-{name}".rstrip("-")
    if name == study and len(name) <= PREFIX_MAX:
        return name
    digest = hashlib.sha256(study.encode()).hexdigest()[:6]
    return f"{name[: PREFIX_MAX - 7].rstrip('-')}-{digest}"


def meta(plan: Plan, name: str, component: str) -> Obj:
    return {"name": name, "namespace": plan.namespace, "labels": labels(plan, name, component)}


def labels(plan: Plan, name: str, component: str) -> dict[str, str]:
    return {
        **pods.PART_OF,
        "app.kubernetes.io/instance": plan.prefix,  # kubectl get all -l app.kubernetes.io/instance=STUDY
        "app.kubernetes.io/name": name,  # unique in the namespace: what Services select
        "app.kubernetes.io/component": component,
    }


def pvc(plan: Plan, name: str, size: str, mode: str, storage_class: str | None = None) -> Obj:
    spec: Obj = {"accessModes": [mode], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(plan, name, "storage"),
        "spec": spec,
    }


def service(plan: Plan, name: str, port: int, headless: bool = False) -> Obj:
    spec: Obj = {"selector": {"app.kubernetes.io/name": name}, "ports": [{"name": "main", "port": port}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(plan, name, "server"), "spec": spec}


def template(plan: Plan, name: str, component: str, pod: Obj) -> Obj:
    return {"metadata": {"labels": labels(plan, name, component)}, "spec": pod}


def postgres(plan: Plan) -> list[Obj]:
    """PostgreSQL for the study (database optuna) and MLflow (database mlflow, made on first start)."""
    name, initdb_name = plan.name("postgres"), plan.name("postgres-initdb")
    initdb = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(plan, initdb_name, "server"),
        "data": {"01-mlflow.sql": "CREATE DATABASE mlflow OWNER sweeper;\n"},
    }
    claim = {
        "metadata": {"name": "pgdata"},  # the claim is pgdata-STUDY-postgres-0
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
    }
    stateful = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(plan, name, "server"),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": template(plan, name, "server", pods.postgres_pod(plan.server, initdb_name)),
            "volumeClaimTemplates": [claim],
        },
    }
    return [initdb, service(plan, name, 5432, headless=True), stateful]


def mlflow(plan: Plan, storage: str) -> list[Obj]:
    """The MLflow server: runs in PostgreSQL, artifacts on a volume, one replica (the volume is RWO)."""
    name, artifacts = plan.name("mlflow"), plan.name("mlflow-artifacts")
    backend = urlsplit(storage)._replace(scheme="postgresql+psycopg", path="/mlflow").geturl()
    args = [
        "--host=0.0.0.0",
        "--port=5000",
        f"--backend-store-uri={backend}",  # the study's server, database mlflow
        "--artifacts-destination=/mlartifacts",
        f"--allowed-hosts={name}:5000,{name}.{plan.namespace}.svc:5000,localhost:*,127.0.0.1:*",
    ]
    pod = pods.mlflow_pod(plan.mlflow_image, args, plan.server, artifacts)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(plan, name, "server"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": template(plan, name, "server", pod),
        },
    }
    return [pvc(plan, artifacts, "50Gi", "ReadWriteOnce"), service(plan, name, 5000), deployment]


def urls(plan: Plan) -> tuple[str, str]:
    """The storage and MLflow URLs the workers use: the external ones, else the study's services."""
    for url in (plan.storage, plan.tracking_uri):
        if url and reach.mask(url) != url:
            raise SweeperError(
                f"{reach.mask(url)}: manifests must not hold a password; drop it from the URL and put it "
                f"in the Secret {SECRET!r} (key password), which the pods read as PGPASSWORD"
            )
    storage = plan.storage or f"postgresql://sweeper@{plan.name('postgres')}:5432/optuna"
    return storage, plan.tracking_uri or f"http://{plan.name('mlflow')}:5000"


def study_config(plan: Plan) -> Obj:
    """The merged study file, mounted into every worker at /study."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(plan, plan.name("study"), "study"),
        "data": {"study.yaml": plan.study_text},
    }


def worker_args(plan: Plan) -> list[str]:
    args = ["run-study", "/study/study.yaml", "--trials", str(plan.trials)]
    if plan.worker.gpus:  # the device plugin sets CUDA_VISIBLE_DEVICES: the pod's GPUs are 0..G-1
        args += ["--gpus", ",".join(str(g) for g in range(plan.worker.gpus))]
    args += ["--data", "/data"] if plan.uses_data else []
    return [*args, *plan.run_args]


def workers(plan: Plan, storage: str, tracking: str) -> Obj:
    """The Indexed Job: K pods, every one a run-study worker of the same study."""
    hosts = [reach.address(storage), reach.address(tracking)]
    claims = {"data": plan.data_claim or plan.name("data"), "work": plan.name("work")}
    servers = [
        {"name": "SWEEPER_STORAGE", "value": storage},
        {"name": "MLFLOW_TRACKING_URI", "value": tracking},
    ]
    pod = pods.worker_pod(
        plan.image, worker_args(plan), plan.worker, servers, hosts, claims, plan.name("study")
    )
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
    name = plan.name("workers")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(plan, name, "worker"),
        "spec": {
            "completionMode": "Indexed",
            "completions": plan.workers,
            "parallelism": plan.workers,
            "backoffLimitPerIndex": plan.retries_per_worker,
            "podFailurePolicy": failure_policy,
            "template": template(plan, name, "worker", pod),
        },
    }


def network_policy(plan: Plan) -> Obj:
    """The study's pods take connections only from sweeper's pods in the namespace (its workers, and
    another study's workers that share its servers); ``kubectl port-forward`` is not affected."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(plan, plan.name("ingress"), "network"),
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/instance": plan.prefix}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": pods.PART_OF}}]}],
        },
    }


def volumes(plan: Plan) -> list[Obj]:
    """The ReadWriteMany claims every worker mounts: the dataset (unless an existing claim holds it)
    and the work folder (cache, checkpoints, weights)."""
    rwx = [pvc(plan, plan.name("work"), "200Gi", "ReadWriteMany", plan.storage_class)]
    if plan.data_claim is None:
        rwx.insert(0, pvc(plan, plan.name("data"), "100Gi", "ReadWriteMany", plan.storage_class))
    return rwx


def render(plan: Plan) -> dict[str, list[Obj]]:
    """The manifests, by file name: a pure function of the plan (``kustomization.yaml`` lists them)."""
    validate(plan)
    storage, tracking = urls(plan)
    files = {
        "volumes.yaml": volumes(plan),
        "study.yaml": [study_config(plan)],
        "network.yaml": [network_policy(plan)],
    }
    if plan.storage is None:
        files["postgres.yaml"] = postgres(plan)
    if plan.tracking_uri is None:
        files["mlflow.yaml"] = mlflow(plan, storage)
    files["workers.yaml"] = [workers(plan, storage, tracking)]
    return files


def validate(plan: Plan) -> None:
    """One-line errors for what the API server would refuse, before anything is written."""
    if plan.workers < 1 or plan.trials < 1:
        raise SweeperError(f"--workers and --trials must be at least 1, got {plan.workers} and {plan.trials}")
    pods.check_resources(plan.worker, "--worker-cpu", "--worker-memory", "--gpus-per-worker")
    pods.check_resources(plan.server, "--server-cpu", "--server-memory", None)
    for option, value in (
        ("--namespace", plan.namespace),
        ("--storage-class", plan.storage_class),
        ("--data-claim", plan.data_claim),
    ):
        pattern, longest, alphabet = NAMES[option]
        if value is not None and not (len(value) <= longest and pattern.fullmatch(value)):
            raise SweeperError(
                f"{option} {value!r}: a Kubernetes name is {alphabet}, starting and ending with a letter "
                f"or digit, up to {longest} characters"
            )


def kustomization(plan: Plan, files: list[str]) -> Obj:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": plan.namespace,
        "resources": files,
    }


def notes(plan: Plan) -> dict[str, str]:
    """What a file's reader must know that its objects cannot say."""
    where = f"storage class {plan.storage_class!r}" if plan.storage_class else "the cluster's default class"
    return {
        "volumes.yaml": (
            "# ReadWriteMany: every worker pod mounts these claims at once, so their storage class\n"
            f"# ({where}) must offer RWX (NFS, CephFS, EFS, Filestore, Azure Files); on a class that\n"
            "# does not, the claims stay Pending. `sweeper k8s --storage-class NAME` chooses it. The pods\n"
            f"# write as uid/gid {pods.APP_UID}: the volumes must let that group write (fsGroup).\n"
        ),
        "kustomization.yaml": (
            f"# Before `kubectl apply -k`: the namespace {plan.namespace!r} and the Secret {SECRET!r} (key\n"
            "# password) exist; they are shared by every study of the namespace, and not rendered here.\n"
        ),
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the study file) as literal blocks, readable in the manifest; no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


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
    extra = notes(plan)
    text = {
        "kustomization.yaml": header + extra["kustomization.yaml"] + dump([kustomization(plan, list(files))])
    }
    text.update({name: header + extra.get(name, "") + dump(objs) for name, objs in files.items()})
    return text


def write(out: Path, text: dict[str, str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for name, body in text.items():
        (out / name).write_text(body)
    return [out / name for name in text]
