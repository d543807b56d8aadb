"""sweeper/launch/k8s.py and ``sweeper k8s``: the manifests validate against the Kubernetes API schema
(offline, with the schemas bundled in ``kubernetes-validate``), pass a policy checker (checkov, where
installed), name every object after the study, and ship the study merged over its bases. No cluster runs
here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeper.errors import SweeperError
from sweeper.launch import k8s
from sweeper.launch.k8s_pods import APP_UID, Resources
from sweeper.study import files as study_files
from sweeper.study import spec as spec_lib
from tests.helpers.processes import REPO

kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]' installs kubernetes-validate")
K8S_VERSION = "1.33"  # backoffLimitPerIndex and podFailurePolicy's FailIndex are GA from 1.33
Objs = dict[str, list[dict[str, Any]]]

# checkov's checks the manifests fail on purpose, with the reason; every other check must pass.
CHECKOV_SKIPPED = {
    "CKV_K8S_43": "image digests: sweeper's images are built by the user, so no digest is known when "
    "rendering; every tag is a version (sweeper's, MLflow's, PostgreSQL's major)",
    "CKV_K8S_15": "imagePullPolicy Always: the tags are versions, and Always would pull the workers' "
    "multi-GB CUDA image for every pod; IfNotPresent is set",
    "CKV_K8S_35": "secrets as files: libpq (psycopg, MLflow) and the postgres image read the password "
    "from PGPASSWORD / POSTGRES_PASSWORD; the value lives only in the Secret",
}
CHECKOV_SKIPPED_FOR = {  # (check, kind): failed by that workload only
    ("CKV_K8S_40", "StatefulSet"): "high UID: the official postgres image runs as its postgres user, "
    "uid 999, which owns its files; every other container runs as uid 10001",
}


def plan(**kw: Any) -> k8s.Plan:
    base: dict[str, Any] = {"study_name": "birds", "study_text": "name: birds\n", "trials": 40, "workers": 8}
    return k8s.Plan(**{**base, **kw})


def every(files: Objs) -> list[dict[str, Any]]:
    return [o for objs in files.values() for o in objs]


def validate(objs: list[dict[str, Any]]) -> None:
    for obj in objs:
        kv.validate(obj, K8S_VERSION, strict=True)  # strict: an unknown or misspelled field is an error


def job(files: Objs) -> dict[str, Any]:
    (j,) = files["workers.yaml"]
    return j


def pod_specs(files: Objs) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o["spec"]["template"]["spec"] for o in every(files) if "template" in o.get("spec", {})}


VARIANTS = [
    plan(),
    plan(storage="postgresql://sweeper@db.internal:5432/optuna"),
    plan(
        uses_data=False, worker=Resources("4", "16Gi", 0), storage_class="nfs.csi", data_claim="shared-birds"
    ),
]


@pytest.mark.parametrize("p", VARIANTS)
def test_every_rendered_object_validates_against_the_api_schema(p: k8s.Plan) -> None:
    validate(every(k8s.render(p)))


def test_an_indexed_job_of_one_gpu_workers_on_one_study() -> None:
    spec = job(k8s.render(plan(run_args=("--epochs", "3"))))["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] == 8
    assert spec["backoffLimitPerIndex"] == 3
    pod = spec["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["args"] == [
        *["run-study", "/study/study.yaml", "--trials", "40", "--gpus", "0", "--data", "/data"],
        *["--epochs", "3"],
    ]
    env = {e["name"]: e for e in worker["env"]}
    assert env["SWEEPER_STORAGE"]["value"] == "postgresql://sweeper@birds-postgres:5432/optuna"
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://birds-mlflow:5000"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "sweeper-db", "key": "password"}
    assert env["SWEEPER_CHECKPOINTS"]["value"].startswith("/work/")  # on the shared volume
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"birds-data", "birds-work"}
    assert {"name": "study", "configMap": {"name": "birds-study"}} in pod["volumes"]


def test_every_container_requests_and_limits_cpu_and_memory_and_the_workers_get_the_gpus() -> None:
    files = k8s.render(plan(worker=Resources("12", "64Gi", 2)))
    for kind, pod in pod_specs(files).items():
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            res = c["resources"]
            assert res["requests"] == res["limits"], (kind, c["name"])  # Guaranteed QoS
            assert {"cpu", "memory"} <= set(res["limits"]), (kind, c["name"])
    (worker,) = pod_specs(files)["Job"]["containers"]
    assert worker["resources"]["limits"] == {"cpu": "12", "memory": "64Gi", "nvidia.com/gpu": 2}
    assert worker["args"][4:6] == ["--gpus", "0,1"]  # a trial on each of the pod's GPUs
    for kind in ("StatefulSet", "Deployment"):
        (server,) = pod_specs(files)[kind]["containers"]
        assert server["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    cpu = job(k8s.render(plan(worker=Resources("4", "8Gi", 0))))["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"] and "--gpus" not in cpu["args"]


def test_every_pod_runs_hardened_as_a_non_root_user() -> None:
    for kind, pod in pod_specs(k8s.render(plan())).items():
        sc = pod["securityContext"]
        assert (
            sc["runAsNonRoot"] and sc["runAsUser"] > 0 and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        )
        assert sc["runAsUser"] == (999 if kind == "StatefulSet" else APP_UID)  # postgres: its image's user
        assert pod["automountServiceAccountToken"] is False
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            assert c["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, (kind, c["name"])
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # the one writable folder
            assert ":" in c["image"] and not c["image"].endswith(":latest")


def test_the_servers_have_startup_liveness_and_readiness_probes() -> None:
    pods = pod_specs(k8s.render(plan()))
    for kind in ("StatefulSet", "Deployment"):
        (c,) = pods[kind]["containers"]
        assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(c), kind
    (pg,) = pods["StatefulSet"]["containers"]
    assert pg["livenessProbe"]["exec"]["command"][:3] == [
        "pg_isready",
        "-h",
        "127.0.0.1",
    ]  # TCP: not initdb's


def names(files: Objs) -> set[str]:
    """Every name the objects take in the namespace, the StatefulSet's generated claims included."""
    out = {o["metadata"]["name"] for o in every(files)}
    for o in every(files):
        for claim in o.get("spec", {}).get("volumeClaimTemplates", []):
            out.add(f"{claim['metadata']['name']}-{o['metadata']['name']}-0")
    return out


def test_two_studies_in_one_namespace_share_no_name_and_select_only_their_own_pods() -> None:
    a, b = k8s.render(plan(study_name="birds")), k8s.render(plan(study_name="Birds_v2"))
    assert names(a) and not names(a) & names(b), names(a) & names(b)
    for mine, other in ((a, b), (b, a)):
        pods = [
            o["spec"]["template"]["metadata"]["labels"]
            for o in every(other)
            if "template" in o.get("spec", {})
        ]
        policies = [
            o["spec"]["podSelector"]["matchLabels"] for o in every(mine) if o["kind"] == "NetworkPolicy"
        ]
        selectors = [o["spec"]["selector"] for o in every(mine) if o["kind"] == "Service"] + policies
        for sel in selectors:
            assert not any(sel.items() <= labels.items() for labels in pods), sel
    assert "Namespace" not in {o["kind"] for o in every(a)}  # the user's: created before the Secret


def test_a_study_shares_another_s_servers_only_when_told() -> None:
    a = k8s.render(plan(study_name="birds"))
    url = "postgresql://sweeper@birds-postgres:5432/optuna"
    fish = k8s.render(plan(study_name="fish", storage=url, tracking_uri="http://birds-mlflow:5000"))
    assert "postgres.yaml" not in fish and "mlflow.yaml" not in fish and not names(a) & names(fish)
    (policy,) = a["network.yaml"]  # birds' servers admit fish's workers: both are sweeper's pods
    fish_pod = job(fish)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= fish_pod.items()


@pytest.mark.parametrize(
    ("study", "prefix"),
    [
        ("birds", "birds"),
        ("ablation-aug", "ablation-aug"),
        ("Birds_v2", "birds-v2-"),
        ("2024.run", "s-2024-run-"),
    ],
)
def test_object_names_are_dns_labels_of_the_study_name(study: str, prefix: str) -> None:
    got = k8s.object_prefix(study)
    assert (
        got == prefix if not prefix.endswith("-") else got.startswith(prefix) and len(got) == len(prefix) + 6
    )
    long = k8s.object_prefix("a" * 128)
    assert len(long) <= k8s.PREFIX_MAX and long != k8s.object_prefix("a" * 127)
    for o in every(k8s.render(plan(study_name="x" * 128))):
        assert k8s.DNS_LABEL.fullmatch(o["metadata"]["name"]) and len(o["metadata"]["name"]) <= 52


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"worker": Resources("eight", "32Gi", 1)}, "--worker-cpu 'eight': expected CPU cores above 0"),
        ({"worker": Resources("0", "32Gi", 1)}, "--worker-cpu '0'"),
        ({"worker": Resources("8", "32GB", 1)}, "--worker-memory '32GB': expected a memory size"),
        ({"worker": Resources("8", "32Gi", -1)}, "--gpus-per-worker must be at least 0, got -1"),
        ({"server": Resources("1", "lots")}, "--server-memory 'lots'"),
        ({"storage_class": "Fast SSD"}, "--storage-class 'Fast SSD': a Kubernetes name"),
        ({"namespace": "ML"}, "--namespace 'ML'"),
        ({"namespace": "a.b"}, "--namespace 'a.b': a Kubernetes name is lower-case letters, digits and '-',"),
        ({"data_claim": "-x"}, "--data-claim '-x'"),
        ({"workers": 0}, "--workers and --trials must be at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(SweeperError, match=message.replace("(", r"\(")) as e:
        k8s.render(plan(**kw))
    assert "\n" not in str(e.value)


def test_servers_in_the_cluster_or_external() -> None:
    inside = k8s.render(plan())
    kinds = {o["kind"] for o in every(inside)}
    assert {"StatefulSet", "Deployment", "Service", "Job", "PersistentVolumeClaim", "ConfigMap"} <= kinds
    (_, _, deployment) = inside["mlflow.yaml"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--backend-store-uri=postgresql+psycopg://sweeper@birds-postgres:5432/mlflow" in args
    outside = k8s.render(plan(storage="postgresql://u@db:5432/optuna", tracking_uri="http://mlflow.corp:80"))
    assert "postgres.yaml" not in outside and "mlflow.yaml" not in outside
    env = {
        e["name"]: e.get("value") for e in job(outside)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["SWEEPER_STORAGE"] == "postgresql://u@db:5432/optuna"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.corp:80"


def test_the_shared_volumes_say_their_storage_class_and_that_they_need_rwx() -> None:
    text = k8s.to_text(plan(storage_class="cephfs", data_claim="birds-images"))
    claims = list(yaml.safe_load_all(text["volumes.yaml"]))
    assert [c["metadata"]["name"] for c in claims] == ["birds-work"]  # the dataset's claim exists already
    assert claims[0]["spec"]["storageClassName"] == "cephfs"
    assert claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "must offer RWX" in text["volumes.yaml"] and "'cephfs'" in text["volumes.yaml"]
    pod = job(k8s.render(plan(data_claim="birds-images")))["spec"]["template"]["spec"]
    assert {"claimName": "birds-images", "readOnly": True} in [
        v.get("persistentVolumeClaim") for v in pod["volumes"]
    ]


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


def test_the_mlflow_image_tag_is_the_version_its_dockerfile_installs() -> None:
    assert f"ARG MLFLOW_VERSION={k8s.MLFLOW_VERSION}\n" in (REPO / "docker" / "mlflow.Dockerfile").read_text()


def local_study(folder: Path) -> Path:
    """A study whose base is a file beside it, and no ``name:`` (its file names it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_mybase.yaml").write_text(
        (study_files.SHIPPED / "quickstart.yaml").read_text().replace("name: quickstart\n", "")
    )
    (folder / "mine.yaml").write_text(
        "base: _mybase\nepochs: 2\nfixed: {lr_head: 3e-3}\n"
        "space: {weight_decay: {float: [1.0e-5, 0.1], log: true}}\n"
    )
    return folder / "mine.yaml"


def test_the_configmap_holds_the_study_merged_over_its_bases(tmp_path: Path) -> None:
    path = local_study(tmp_path / "src")
    here = spec_lib.load(str(path))
    text = study_files.merged_text(path, here.name)
    shipped = tmp_path / "pod" / "study" / "study.yaml"  # the pod has this one file
    shipped.parent.mkdir(parents=True)
    shipped.write_text(text)
    there = spec_lib.load(str(shipped))
    assert (
        there.name == "mine" and not there.bases and text.startswith("# mine.yaml, merged over _mybase.yaml")
    )
    assert spec_lib.to_document(there) == spec_lib.to_document(here)
    with pytest.raises(SweeperError, match="base"):  # the raw file, as shipped before, cannot load there
        shipped.write_text(path.read_text())
        spec_lib.load(str(shipped))


# ---- checkov, the shipped example, the command line ----------------------------------------------------


def checkov() -> str:
    """The checkov command: on PATH or $CHECKOV (.ci/run installs it in its own venv)."""
    found = os.environ.get("CHECKOV") or shutil.which("checkov")
    if found:
        return found
    msg = "checkov not installed: pip install checkov (in its own venv; .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def checkov_failures(folder: Path) -> list[tuple[str, str, str]]:
    """(check, kind, resource) of every check checkov fails on the YAML files in ``folder``."""
    r = subprocess.run(
        [checkov(), "-d", str(folder), "--framework", "kubernetes", "--quiet", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode in (0, 1), r.stderr  # 1: some check failed
    reports = json.loads(r.stdout)
    out = []
    for report in reports if isinstance(reports, list) else [reports]:
        assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 100, report[
            "summary"
        ]
        for f in report["results"]["failed_checks"]:
            out.append((f["check_id"], f["resource"].split(".")[0], f["resource"]))
    return out


@pytest.mark.slow
def test_checkov_passes_every_check_it_is_not_told_why_to_skip(tmp_path: Path) -> None:
    variants = [plan(), plan(study_name="fish", worker=Resources("4", "16Gi", 0), data_claim="shared")]
    for p in variants:  # one checkov run over both folders
        text = k8s.to_text(p)
        k8s.write(tmp_path / p.study_name, {n: t for n, t in text.items() if n != "kustomization.yaml"})
    failed = checkov_failures(tmp_path)
    unexplained = [
        f for f in failed if f[0] not in CHECKOV_SKIPPED and (f[0], f[1]) not in CHECKOV_SKIPPED_FOR
    ]
    assert not unexplained, unexplained
    assert {f[0] for f in failed} >= {"CKV_K8S_43"}  # checkov ran the checks the skip list explains
    assert {f[2].split(".")[2].split("-")[0] for f in failed} == {"birds", "fish"}  # and read both folders


@pytest.mark.slow
def test_the_shipped_manifests_validate_and_match_the_renderer(cli: Callable) -> None:
    shipped = REPO / "deploy" / "k8s"
    r = cli(
        "k8s", "ablation-aug", "--trials", "40", "--workers", "8", "--out", "fresh",
        "--image", f"registry.example.com/{k8s.IMAGE}",
        "--mlflow-image", f"registry.example.com/{k8s.MLFLOW_IMAGE}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ReadWriteMany" in r.stdout and "ablation-aug-data" in r.stdout
    names = yaml.safe_load((shipped / "kustomization.yaml").read_text())["resources"]
    assert sorted(p.name for p in shipped.glob("*.yaml")) == sorted([*names, "kustomization.yaml"])
    for name in names:
        objs = list(yaml.safe_load_all((shipped / name).read_text()))
        validate(objs)
        if name != "study.yaml":  # the study file itself may change; the manifests around it may not drift
            assert (shipped / name).read_text() == (Path("fresh") / name).read_text(), name


@pytest.mark.slow
def test_cli_prints_the_manifests_by_default_and_bad_input_is_one_line(cli: Callable) -> None:
    r = cli("k8s", "quickstart", "--trials", "8", "--workers", "2", "--gpus-per-worker", "0")
    assert r.returncode == 0, r.stderr
    assert "# --- workers.yaml" in r.stdout and "completionMode: Indexed" in r.stdout
    assert "- --data" not in r.stdout and "- --gpus" not in r.stdout  # built-in data, CPU pods
    r = cli("k8s", "quickstart", "--trials", "8", "--workers", "2", "--worker-memory", "32GB")
    assert r.returncode == 2 and r.stderr.startswith("error: --worker-memory '32GB'"), r.stderr
    assert r.stderr.count("\n") == 1


@pytest.mark.slow
def test_sweeper_check_accepts_the_configmap_in_the_pod_s_layout(cli: Callable, tmp_path: Path) -> None:
    """The pod has /study/study.yaml from the ConfigMap and nothing of the study's folder: its local base
    is not there. ``sweeper check`` there resolves the same study as it does beside the files."""
    path = local_study(tmp_path / "src")
    r = cli("k8s", str(path), "--trials", "4", "--workers", "1", "--out", "rendered")
    assert r.returncode == 0, r.stderr
    (config,) = yaml.safe_load_all(Path("rendered/study.yaml").read_text())
    pod = tmp_path / "pod"
    (pod / "study").mkdir(parents=True)
    (pod / "study" / "study.yaml").write_text(config["data"]["study.yaml"])
    assert not Path("studies").exists()  # the working directory has no study folder either
    inside = cli("check", str(pod / "study" / "study.yaml"), "--json")
    assert inside.returncode == 0, inside.stderr
    beside = spec_lib.to_document(spec_lib.load(str(path)))  # what `sweeper check` resolves beside the files
    assert json.loads(inside.stdout)["study"] == json.loads(json.dumps(spec_lib.plain(beside), default=str))
