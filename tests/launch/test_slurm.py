"""sweeper/slurm.py and ``sweeper slurm``: the batch script, the checks before submitting, and a real
job array on a one-node Slurm cluster started by the tests (tests/slurm_cluster.py)."""

from __future__ import annotations

import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from sweeper.errors import SweeperError
from sweeper.launch import slurm as slurm_lib
from sweeper.store import reach, stores
from sweeper.store import record as record_lib
from tests.helpers.builders import TINY, write_tiny_study
from tests.helpers.processes import REPO, wait_for
from tests.helpers.servers import create_database, free_port
from tests.helpers.slurm_cluster import Cluster, slurm_cluster

SECRET = "s3cret-pw"


def job(**kw: object) -> slurm_lib.Job:
    base: dict[str, object] = {
        "study": "/srv/studies/birds.yaml",
        "name": "birds",
        "trials": 40,
        "nodes": 2,
        "gpus_per_node": 4,
        "workdir": Path("/srv/work"),
        "checkpoints": Path("/srv/work/checkpoints"),
    }
    return slurm_lib.Job(**{**base, **kw})  # type: ignore[arg-type]


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_one_array_task_per_gpu_each_running_the_same_study() -> None:
    script = slurm_lib.render(job(partition="gpu", time="1-00:00:00", run_args=("--epochs", "3")))
    opts = sbatch_lines(script)
    assert "--array=0-7" in opts and "--gres=gpu:1" in opts and "--ntasks=1" in opts
    assert {"--partition=gpu", "--time=1-00:00:00", "--requeue", "--export=ALL", "--mem=32G"} <= set(opts)
    # SIGTERM to the batch shell before the time limit, and the batch shell is run-study itself
    assert f"--signal=B:TERM@{slurm_lib.STOP_BEFORE_S}" in opts
    assert "--chdir=/srv/work" in opts
    last = script.strip().splitlines()[-1]
    assert last == "exec sweeper run-study /srv/studies/birds.yaml --trials 40 --epochs 3 --gpus 0"
    assert "export SWEEPER_CHECKPOINTS=/srv/work/checkpoints" in script
    assert script.index("#SBATCH") < script.index("set -euo")  # sbatch reads directives before commands


def test_cpu_nodes_get_one_task_each_and_no_gres() -> None:
    script = slurm_lib.render(job(gpus_per_node=0, nodes=3, workers_per_gpu=2, cpus_per_task=8, mem="64000"))
    opts = sbatch_lines(script)
    assert "--array=0-2" in opts and "--cpus-per-task=8" in opts and "--mem=64000" in opts
    assert not any(o.startswith("--gres") for o in opts)
    assert script.strip().endswith("--trials 40 --workers 2")


def test_the_script_reads_the_server_urls_from_the_environment() -> None:
    script = slurm_lib.render(job())
    assert ': "${SWEEPER_STORAGE:?' in script and ': "${MLFLOW_TRACKING_URI:?' in script
    assert "postgresql://" not in script.replace("postgresql://USER:PASSWORD@", "").replace(
        "(postgresql://...)", ""
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"nodes": 0}, "--nodes must be at least 1, got 0"),
        ({"gpus_per_node": -1}, "--gpus-per-node must be at least 0"),
        ({"partition": "gpu long"}, "--partition 'gpu long': a Slurm partition name has no spaces"),
        ({"partition": "gpu;rm"}, "no spaces or special characters"),
        ({"time": "one day"}, "--time 'one day': expected Slurm's"),
        ({"mem": "32GB"}, "--mem '32GB': expected a size per task"),
        ({"mem": "0"}, "--mem '0': expected a size per task"),
    ],
)
def test_bad_job_is_one_error(kw: dict[str, object], message: str) -> None:
    with pytest.raises(SweeperError, match=message.replace("(", r"\(")) as e:
        slurm_lib.render(job(**kw))
    assert "\n" not in str(e.value)


def test_mask_hides_the_password_only() -> None:
    assert reach.mask(f"postgresql://u:{SECRET}@db:5432/optuna") == "postgresql://u:***@db:5432/optuna"
    assert reach.mask("http://mlflow:5000") == "http://mlflow:5000"
    assert reach.address("postgresql+psycopg://u@db/optuna") == ("db", 5432)


def test_servers_must_be_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SweeperError, match="database server.*got 'sqlite:///sweeper.db'"):
        reach.servers("sqlite:///sweeper.db", "http://mlflow:5000")
    with pytest.raises(SweeperError, match="one MLflow server.*got 'sqlite:///mlruns/mlflow.db'"):
        reach.servers("postgresql://u@db/optuna", "sqlite:///mlruns/mlflow.db")
    with pytest.raises(SweeperError, match=r"--storage postgresql://"):
        reach.servers(None, None)
    monkeypatch.setenv("SWEEPER_STORAGE", "postgresql://u@db/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert reach.servers(None, None) == ("postgresql://u@db/optuna", "http://mlflow:5000")


def test_a_closed_port_is_unreachable_at_once() -> None:
    t0 = time.monotonic()
    with pytest.raises(SweeperError, match=r"not reachable from here \(127.0.0.1:\d+: Connection refused"):
        reach.check(f"postgresql://u:{SECRET}@127.0.0.1:{free_port()}/db", "the study storage")
    assert time.monotonic() - t0 < 2


@pytest.fixture
def listening() -> Iterator[int]:
    """A port that accepts TCP connections, as a server would (the check never logs in)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def urls(port: int) -> list[str]:
    return [
        "--storage",
        f"postgresql://sweeper:{SECRET}@127.0.0.1:{port}/optuna",
        "--tracking-uri",
        f"http://127.0.0.1:{port}",
    ]


@pytest.mark.slow
def test_cli_writes_the_script_and_never_the_password(cli: Callable, listening: int) -> None:
    r = cli("slurm", "quickstart", "--trials", "8", "--gpus-per-node", "2", *urls(listening))
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr and "sweeper:***@" in r.stdout
    script = Path("slurm/quickstart.sbatch").read_text()
    assert SECRET not in script and "--array=0-1" in script
    assert Path("slurm-logs").is_dir() and Path("checkpoints").is_dir()


@pytest.mark.slow
def test_cli_dry_run_prints_the_script_and_writes_nothing(cli: Callable) -> None:
    r = cli("slurm", "quickstart", "--trials", "8", "--gpus-per-node", "1", "--dry-run", *urls(free_port()))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#!/bin/bash") and "--array=0-0" in r.stdout and SECRET not in r.stdout
    assert not Path("slurm").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "error: --nodes must be at least 1, got 0"),
        (["--partition", "gpu long"], "error: --partition 'gpu long'"),
        (["--mem", "lots"], "error: --mem 'lots'"),
        (["--storage", "sqlite:///sweeper.db"], "error: workers on several machines share the study"),
        (["--storage", "postgresql://u:s3cret-pw@127.0.0.1:1/x"], "error: the study storage postgresql"),
        (["--tracking-uri", "http://127.0.0.1:1"], "error: the MLflow tracking server http://127.0.0.1:1"),
    ],
)
@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_nothing_is_written(
    cli: Callable, listening: int, args: list[str], message: str
) -> None:
    r = cli("slurm", "quickstart", "--trials", "8", "--gpus-per-node", "1", *urls(listening), *args)
    assert r.returncode == 2
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr
    assert SECRET not in r.stderr
    assert not Path("slurm").exists()


@pytest.mark.slow
def test_cli_submit_without_sbatch_is_one_error(cli: Callable, listening: int, tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    r = cli(
        "slurm", "quickstart", "--trials", "8", "--gpus-per-node", "1", "--submit", *urls(listening),
        env={"PATH": str(empty)},
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("error: sbatch not found on PATH"), r.stderr
    assert not Path("slurm").exists()


# ---- a real job array on a one-node Slurm cluster ------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with slurm_cluster() as c:
        yield c


def task_env(cluster: Cluster, tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a user's shell on the login node has: ``sweeper`` on PATH, and the cluster's config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "sweeper"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m sweeper "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    path = f"{bin_dir}:{os.environ['PATH']}"
    return {"SLURM_CONF": str(cluster.conf), "PATH": path, "PYTHONPATH": str(REPO), **extra}


def submit(cli: Callable, study: str, trials: int, storage: str, tracking: str, env: dict[str, str]) -> str:
    r = cli(
        "slurm", study, "--trials", str(trials), "--gpus-per-node", "0", "--nodes", "3",
        "--cpus-per-task", "1", "--mem", "512M", "--submit", "--storage", storage, "--tracking-uri", tracking,
        *TINY,
        env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("submitted job ")]
    return line.split()[2].rstrip(":")


def wait_done(cluster: Cluster, job_id: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while cluster.run("squeue", "-h", "-j", job_id).strip():
        if time.monotonic() > deadline:
            cluster.run("scancel", job_id)
            raise AssertionError(f"job {job_id} still running after {timeout} s:\n{task_logs()}")
        time.sleep(1)


def task_logs() -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(Path("slurm-logs").glob("*")))


def check_study(name: str, storage: str, tracking: str, n: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly n counted trials, one closed MLflow run per trial, nothing left RUNNING."""
    trials = optuna.load_study(study_name=name, storage=stores.with_driver(storage)).get_trials()
    assert record_lib.counts(trials)["counted"] == n, task_logs()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    client = MlflowClient(tracking)
    runs = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], "tags.`sweeper.kind` = 'trial'"
    )
    assert "RUNNING" not in {r.info.status for r in runs}
    started = [t for t in trials if "mlflow_run_id" in t.user_attrs]
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in started)
    return trials


@pytest.mark.slow
@pytest.mark.postgres
def test_a_job_array_runs_exactly_n_trials(
    cli: Callable, cluster: Cluster, pg_server: str, mlflow_url: str, image_folder: Path, tmp_path: Path
) -> None:
    storage = create_database(pg_server, "slurm_array")
    study = write_tiny_study("slurm-array", image_folder)
    job_id = submit(cli, study, 4, storage, mlflow_url, task_env(cluster, tmp_path))
    wait_done(cluster, job_id)
    logs = sorted(Path("slurm-logs").glob(f"sweeper-slurm-array-{job_id}_*.out"))
    assert len(logs) == 3, task_logs()  # three tasks ran, each a worker of the one study
    trials = check_study("slurm-array", storage, mlflow_url, 4)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4 and len({t.user_attrs["worker"] for t in done}) >= 2  # shared by tasks


def array_task_of(pid: int) -> str:
    """The Slurm array task a worker process belongs to, from its environment (we are root here)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (task,) = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"SLURM_ARRAY_TASK_ID=")]
    return task


@pytest.mark.slow
@pytest.mark.postgres
def test_a_cancelled_task_s_trial_is_finished_by_the_others(
    cli: Callable, cluster: Cluster, pg_server: str, mlflow_url: str, image_folder: Path, tmp_path: Path
) -> None:
    storage = create_database(pg_server, "slurm_cancel")
    study = write_tiny_study("slurm-cancel", image_folder, epochs=30)  # outlasts the signal's delivery
    fast = {"SWEEPER_HEARTBEAT": "1", "SWEEPER_GRACE": "4"}  # seconds; the defaults are 20 and 60
    job_id = submit(cli, study, 3, storage, mlflow_url, task_env(cluster, tmp_path, **fast))
    url = stores.with_driver(storage)
    wait_for(lambda: "slurm-cancel" in _names(url), what="the study", timeout=120)
    st = optuna.load_study(study_name="slurm-cancel", storage=url)

    def running_past_an_epoch() -> list[optuna.trial.FrozenTrial]:
        return [t for t in st.get_trials() if t.state == TrialState.RUNNING and t.intermediate_values]

    trial = wait_for(running_past_an_epoch, what="a trial past its first epoch", timeout=120)[0]  # type: ignore[index]
    pid = int(trial.user_attrs["worker"].split(":")[1].split("/")[0])
    # What --signal=B:TERM delivers before the time limit: SIGTERM to the batch shell alone (a plain
    # scancel signals every process; tests/e2e/test_faults.py covers a signal to the whole group). Only
    # because the script exec's run-study does the signal reach it: a shell would wait for its child.
    cluster.run("scancel", "--batch", "--signal=TERM", f"{job_id}_{array_task_of(pid)}")
    wait_done(cluster, job_id)

    trials = check_study("slurm-cancel", storage, mlflow_url, 3)
    assert trials[trial.number].state == TrialState.FAIL
    assert trials[trial.number].user_attrs["fail_kind"] == "interrupted", trials[trial.number].user_attrs
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
    assert retry.state == TrialState.COMPLETE and retry.params == trial.params
    assert retry.user_attrs["resumed_from_epoch"] >= 1  # from the checkpoint in the shared folder
    assert f":{pid}/" not in retry.user_attrs["worker"]  # finished by another task


def _names(url: str) -> list[str]:
    try:
        return optuna.get_all_study_names(url)
    except Exception:  # tables not created yet
        return []
