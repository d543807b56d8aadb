"""Commands that launch workers where the compute lives: slurm, k8s."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from sweeper.cli.app import (
    DataOpt,
    SetOpt,
    StorageOpt,
    StudyArg,
    TrackingOpt,
    app,
    load_spec,
)
from sweeper.errors import SweeperError
from sweeper.launch import k8s as k8s_lib  # light: yaml and URLs, as the CLI already has
from sweeper.study import files as study_files


# slurm is long only in its signature: each option with its help text; the body is under 60 lines.
@app.command("slurm")
def slurm(
    study: StudyArg,
    trials: Annotated[int, typer.Option("--trials", help="Total trials the study should hold (all tasks).")],
    gpus_per_node: Annotated[
        int, typer.Option("--gpus-per-node", help="GPUs per node: one array task each. 0: CPU nodes.")
    ],
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes' worth of tasks in the job array.")] = 1,
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition(s).")] = None,
    time_: Annotated[
        str | None, typer.Option("--time", help="Time limit per task, e.g. 1-00:00:00 (Slurm's format).")
    ] = None,
    workers_per_gpu: Annotated[
        int, typer.Option("--workers-per-gpu", help="Trials at once per task's GPU (or CPU task).")
    ] = 1,
    cpus_per_task: Annotated[int, typer.Option("--cpus-per-task", help="CPUs per array task.")] = 4,
    mem: Annotated[
        str, typer.Option("--mem", help="Memory per array task, Slurm's format: 32G, 64000 (MB).")
    ] = "32G",
    checkpoints: Annotated[
        Path | None,
        typer.Option(
            "--checkpoints", help="Epoch checkpoints on storage all nodes mount. Default: ./checkpoints."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="The batch script to write. Default: slurm/STUDY.sbatch.")
    ] = None,
    submit: Annotated[bool, typer.Option("--submit", help="Also submit it with sbatch.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print the script (the servers are not contacted).")
    ] = False,
    data: DataOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Cap epochs per trial.")] = None,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Write (and with --submit, sbatch) a Slurm job array: one run-study worker per GPU, one study."""
    from sweeper.launch import slurm as slurm_lib
    from sweeper.store import reach

    if submit and dry_run:
        raise SweeperError("--submit and --dry-run contradict each other: choose one")
    if submit:
        slurm_lib.require_sbatch()
    spec = load_spec(study, data, set_, epochs, trials)
    job = slurm_lib.Job(
        study=str(spec.path.resolve()),
        name=spec.name,
        trials=trials,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        workdir=Path.cwd(),
        checkpoints=(checkpoints or Path("checkpoints")).resolve(),
        workers_per_gpu=workers_per_gpu,
        cpus_per_task=cpus_per_task,
        mem=mem,
        partition=partition,
        time=time_,
        run_args=slurm_lib.run_args(data, epochs, set_),
    )
    script = slurm_lib.render(job)
    storage_url, tracking = reach.servers(storage, tracking_uri)
    if dry_run:  # nothing leaves this machine, so the servers need not answer yet
        typer.echo(script, nl=False)
        return
    reach.check_servers(storage_url, tracking)
    path = slurm_lib.write(job, script, out or Path("slurm") / f"{spec.name}.sbatch")
    typer.echo(
        f"wrote {path}: {job.tasks} array tasks for study {spec.name} ({trials} trials); storage "
        f"{reach.mask(storage_url)}, MLflow {reach.mask(tracking)} (both reachable from here)"
    )
    if reach.is_loopback(storage_url) or reach.is_loopback(tracking):
        typer.echo("note: a localhost URL reaches only this machine; tasks on other nodes need its name")
    if not submit:
        typer.echo(f"submit: SWEEPER_STORAGE=... MLFLOW_TRACKING_URI=... sbatch {path}")
        return
    job_id = slurm_lib.submit(path, storage_url, tracking, dict(os.environ))
    typer.echo(f"submitted job {job_id}: squeue -j {job_id}; logs in {job.logs}")


# k8s is long only in its signature, as slurm; its defaults are sweeper.launch.k8s's.
@app.command("k8s")
def k8s(
    study: StudyArg,
    trials: Annotated[int, typer.Option("--trials", help="Total trials the study should hold (all pods).")],
    workers: Annotated[int, typer.Option("--workers", help="Worker pods at once.")],
    image: Annotated[
        str, typer.Option("--image", help="The workers' image (docker/Dockerfile), as the cluster pulls it.")
    ] = k8s_lib.IMAGE,
    mlflow_image: Annotated[
        str, typer.Option("--mlflow-image", help="The MLflow server's image (docker/mlflow.Dockerfile).")
    ] = k8s_lib.MLFLOW_IMAGE,
    namespace: Annotated[str, typer.Option("--namespace", help="Kubernetes namespace.")] = "sweeper",
    gpus_per_worker: Annotated[
        int, typer.Option("--gpus-per-worker", help="nvidia.com/gpu per pod, one trial each; 0: CPU pods.")
    ] = k8s_lib.WORKER.gpus,
    worker_cpu: Annotated[
        str, typer.Option("--worker-cpu", help="CPU cores per worker pod, requested and its limit.")
    ] = k8s_lib.WORKER.cpu,
    worker_memory: Annotated[
        str,
        typer.Option(
            "--worker-memory", help="Memory per worker pod, requested and its limit (/dev/shm in it)."
        ),
    ] = k8s_lib.WORKER.memory,
    server_cpu: Annotated[
        str, typer.Option("--server-cpu", help="CPU cores of PostgreSQL and of MLflow, each.")
    ] = k8s_lib.SERVER.cpu,
    server_memory: Annotated[
        str, typer.Option("--server-memory", help="Memory of PostgreSQL and of MLflow, each.")
    ] = k8s_lib.SERVER.memory,
    storage_class: Annotated[
        str | None,
        typer.Option(
            "--storage-class", help="Storage class of the shared volumes; it must offer ReadWriteMany."
        ),
    ] = None,
    data_claim: Annotated[
        str | None,
        typer.Option("--data-claim", help="An existing claim holding the dataset, instead of a new one."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the kustomize files. Default: print them.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage", help="An external PostgreSQL URL (no password) instead of the StatefulSet."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="An external MLflow server URL instead of the Deployment."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Cap epochs per trial.")] = None,
    set_: SetOpt = None,
) -> None:
    """Render Kubernetes manifests: PostgreSQL, MLflow and an Indexed Job of GPU workers for one study."""
    spec = load_spec(study, None, set_, epochs, trials)
    passed = [*(["--epochs", str(epochs)] if epochs else []), *[a for s in set_ or [] for a in ("--set", s)]]
    plan = k8s_lib.Plan(
        study_name=spec.name,
        study_text=study_files.merged_text(spec.path, spec.name),
        trials=trials,
        workers=workers,
        namespace=namespace,
        image=image,
        mlflow_image=mlflow_image,
        storage=storage,
        tracking_uri=tracking_uri,
        uses_data=not str(spec.data_root).startswith("builtin:"),
        run_args=tuple(passed),
        worker=k8s_lib.Resources(cpu=worker_cpu, memory=worker_memory, gpus=gpus_per_worker),
        server=k8s_lib.Resources(cpu=server_cpu, memory=server_memory),
        storage_class=storage_class,
        data_claim=data_claim,
    )
    text = k8s_lib.to_text(plan)
    if out is None:
        typer.echo("".join(f"# --- {name}\n{body}" for name, body in text.items()), nl=False)
        return
    k8s_lib.write(out, text)
    rwx = f"storage class {storage_class}" if storage_class else "the default storage class"
    data = data_claim or plan.name("data")
    typer.echo(
        f"wrote {', '.join(text)} to {out}; then: kubectl create namespace {namespace}; "
        f"kubectl -n {namespace} create secret generic {k8s_lib.SECRET} --from-literal=password=...; "
        f"kubectl apply -k {out}; copy the dataset into the claim {data}. The shared claims need "
        f"ReadWriteMany from {rwx}."
    )
