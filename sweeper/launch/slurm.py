"""One study on a Slurm cluster: a job array whose every task is a ``run-study`` worker on one GPU.

All tasks run the same command against the same PostgreSQL storage and MLflow server, so the study ends
with exactly N trials whatever the number of tasks, the order they start in, or the tasks Slurm kills,
requeues or preempts (a running trial's worker that vanishes is failed by the others through Optuna's
heartbeats, and its params re-queued; the retry resumes from the epoch checkpoint on shared storage).
The servers' URLs hold passwords, so the script reads them from the environment that ``sbatch``
exports to the job (``--export=ALL``) instead of holding them.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from sweeper.errors import SweeperError

PARTITION = re.compile(r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*")  # one name, or a comma list
TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}")  # minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
MEM = re.compile(r"[1-9]\d*[KMGT]?")  # Slurm's --mem: megabytes, or with a unit
STOP_BEFORE_S = 120  # SIGTERM this long before the time limit: trials are closed and re-queued, not killed


@dataclass(frozen=True)
class Job:
    """What ``sweeper slurm`` submits. Paths are absolute: tasks run on other nodes, in ``workdir``."""

    study: str  # the study file, absolute
    name: str  # the study's name: the job is sweeper-NAME
    trials: int  # the study's total, shared by all tasks
    nodes: int
    gpus_per_node: int  # 0: CPU nodes
    workdir: Path  # on storage every node mounts (the submit folder)
    checkpoints: Path  # epoch checkpoints, on storage every node mounts
    workers_per_gpu: int = 1  # trials at once on one GPU (small models); on CPU nodes, per task
    cpus_per_task: int = 4  # DataLoader workers and the trial processes' threads
    mem: str = "32G"  # per task: a fine-tuning trial's process, its DataLoader workers and pinned batches
    partition: str | None = None
    time: str | None = None  # Slurm's format, e.g. 1-00:00:00; at the limit the task requeues its trials
    run_args: tuple[str, ...] = field(default=())  # --data, --epochs, --set, passed on to run-study

    @property
    def tasks(self) -> int:
        """Array tasks: one per GPU of every node (one per node on CPU nodes)."""
        return self.nodes * max(self.gpus_per_node, 1)

    @property
    def logs(self) -> Path:
        return self.workdir / "slurm-logs"


def validate(job: Job) -> None:
    """One-line errors for what ``sbatch`` would reject, or a job that could never run."""
    for key, value, low in (
        ("--nodes", job.nodes, 1),
        ("--gpus-per-node", job.gpus_per_node, 0),
        ("--workers-per-gpu", job.workers_per_gpu, 1),
        ("--cpus-per-task", job.cpus_per_task, 1),
        ("--trials", job.trials, 1),
    ):
        if value < low:
            raise SweeperError(f"{key} must be at least {low}, got {value}")
    if job.partition is not None and not PARTITION.fullmatch(job.partition):
        raise SweeperError(
            f"--partition {job.partition!r}: a Slurm partition name has no spaces or special characters "
            "(several: gpu,gpu-long); `sinfo -s` lists them"
        )
    if not MEM.fullmatch(job.mem):
        raise SweeperError(
            f"--mem {job.mem!r}: expected a size per task, as 32G or 64000 (megabytes); 0 (a whole node's "
            "memory for every task) is not accepted"
        )
    if job.time is not None and not TIME.fullmatch(job.time):
        raise SweeperError(
            f"--time {job.time!r}: expected Slurm's MINUTES, HH:MM:SS or D-HH:MM:SS (e.g. 1-00:00:00)"
        )


def command(job: Job) -> list[str]:
    """The ``run-study`` command every task runs: the same one, so the study ends at exactly N trials."""
    cmd = ["sweeper", "run-study", job.study, "--trials", str(job.trials), *job.run_args]
    if job.gpus_per_node:
        cmd += ["--gpus", "0"]  # Slurm sets CUDA_VISIBLE_DEVICES to the task's GPU: it is device 0
    if job.workers_per_gpu > 1:
        cmd += ["--workers", str(job.workers_per_gpu)]
    return cmd


def directives(job: Job) -> list[str]:
    """The ``#SBATCH`` lines."""
    opts = [
        f"--job-name=sweeper-{job.name}",
        f"--array=0-{job.tasks - 1}",
        "--ntasks=1",
        f"--cpus-per-task={job.cpus_per_task}",
        f"--mem={job.mem}",
        *(["--gres=gpu:1"] if job.gpus_per_node else []),
        *([f"--partition={job.partition}"] if job.partition else []),
        *([f"--time={job.time}"] if job.time else []),
        # SIGTERM to the batch shell, which is run-study (exec), STOP_BEFORE_S before the time limit:
        # its trials are closed and re-queued instead of killed with the task
        f"--signal=B:TERM@{STOP_BEFORE_S}",
        "--requeue",  # preempted or failed node: Slurm runs the task again; it resumes the study
        "--open-mode=append",  # a requeued task's log goes on in the same file
        "--export=ALL",  # the submitting environment: SWEEPER_STORAGE, MLFLOW_TRACKING_URI, PATH
        f"--chdir={job.workdir}",
        f"--output={job.logs}/%x-%A_%a.out",
    ]
    return [f"#SBATCH {shlex.quote(o)}" for o in opts]


def render(job: Job) -> str:
    """The batch script: a pure function of the job, so what ``--dry-run`` prints is what runs."""
    validate(job)
    on = f"one GPU each ({job.gpus_per_node} per node)" if job.gpus_per_node else "CPU"
    lines = [
        "#!/bin/bash",
        f"# Written by `sweeper slurm`: study {job.name!r}, {job.trials} trials in total, shared by",
        f"# {job.tasks} array tasks on {on}; each task is one run-study process with "
        f"{job.workers_per_gpu} worker(s).",
        "# The servers' URLs hold passwords, so they come from the environment of `sbatch`, not this file:",
        "#   SWEEPER_STORAGE=postgresql://USER:PASSWORD@HOST:5432/DB MLFLOW_TRACKING_URI=http://HOST:5000 \\",
        "#     sbatch THIS_FILE          (`sweeper slurm ... --submit` does this)",
        f"# {STOP_BEFORE_S} s before the time limit Slurm sends SIGTERM to run-study (--signal=B:TERM; exec",
        "# makes it the batch shell), so a trial the limit would cut is closed and re-queued, not lost.",
        "# A task stopped by Slurm (scancel, preemption, time limit: SIGTERM) closes its running trials",
        "# as failed and re-queues their params; a task that vanishes (node lost) has its trials failed by",
        "# the others after $SWEEPER_GRACE s without a heartbeat, and re-queued. Either way a retry resumes",
        "# from its last epoch checkpoint in SWEEPER_CHECKPOINTS, a folder every node mounts; --requeue",
        "# brings a preempted task back into the study.",
        *directives(job),
        "set -euo pipefail",
        ': "${SWEEPER_STORAGE:?export the study storage URL (postgresql://...) before sbatch}"',
        ': "${MLFLOW_TRACKING_URI:?export the MLflow server URL (http://...) before sbatch}"',
        f"export SWEEPER_CHECKPOINTS={shlex.quote(str(job.checkpoints))}",
        "export PYTHONUNBUFFERED=1",
        # exec: Slurm's SIGTERM (scancel, preemption, time limit) reaches run-study, which closes its
        # trials as failed and re-queues their params before it exits
        f"exec {shlex.join(command(job))}",
    ]
    return "\n".join(lines) + "\n"


def write(job: Job, script: str, path: Path) -> Path:
    """Write the script and create the folders the tasks need before they start (logs, checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    job.logs.mkdir(parents=True, exist_ok=True)
    job.checkpoints.mkdir(parents=True, exist_ok=True)
    return path


def require_sbatch() -> str:
    found = shutil.which("sbatch")
    if found is None:
        raise SweeperError(
            "sbatch not found on PATH: run this on a Slurm login node, or write the script without "
            "--submit and submit it there"
        )
    return found


def submit(path: Path, storage: str, tracking: str, env: dict[str, str]) -> str:
    """``sbatch`` the script with the servers' URLs in its environment; returns the job id."""
    full = {**env, "SWEEPER_STORAGE": storage, "MLFLOW_TRACKING_URI": tracking}
    r = subprocess.run(
        [require_sbatch(), "--parsable", str(path)], env=full, capture_output=True, text=True, timeout=60
    )
    if r.returncode != 0:
        first = (r.stderr.strip().splitlines() or ["no message"])[0]
        raise SweeperError(f"sbatch {path} failed: {first}")
    return r.stdout.strip().split(";")[0]


def run_args(data: Path | None, epochs: int | None, sets: list[str] | None) -> tuple[str, ...]:
    """``sweeper slurm``'s options that go on to every task's ``run-study``, paths made absolute."""
    out: list[str] = []
    if data is not None:
        out += ["--data", str(data.resolve())]
    if epochs is not None:
        out += ["--epochs", str(epochs)]
    for s in sets or []:
        out += ["--set", s]
    return tuple(out)
