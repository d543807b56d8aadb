"""A real one-node Slurm cluster for the ``sweeper slurm`` tests, started on this machine by the tests.

Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them): a fresh munge key and ``munged`` on its
own socket, then ``slurmctld`` and ``slurmd`` from one ``slurm.conf`` whose state, spool, logs and ports
are private to a temporary folder, so nothing of the machine's own Slurm (if any) is touched. The daemons
run as root (``SlurmUser=root``), with no cgroups (``proctrack/linuxproc``, ``task/none``). Where that
cannot be done (not root, binaries missing), the tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.servers import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
SLOTS = 4  # CPUs the node offers (oversubscribing the machine's cores is fine for tiny trials)


@dataclass(frozen=True)
class Cluster:
    """A running cluster: client commands need ``env`` (``SLURM_CONF``) to find it."""

    conf: Path
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str) -> str:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return r.stdout

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))


def unavailable() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the one-node Slurm cluster runs its daemons as root"
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install slurm-wlm munge (.ci/run does)"
    return None


def slurm_conf(root: Path, node: str) -> str:
    ctld, slurmd = free_port(), free_port()
    lines = [
        "ClusterName=sweeper-test",
        f"SlurmctldHost={node}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={ctld}",
        f"SlurmdPort={slurmd}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge.socket",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1",
        "SlurmdParameters=config_overrides",  # the node offers SLOTS CPUs whatever this machine has
        "ReturnToService=2",
        "MpiDefault=none",
        "KillWait=10",
        "InactiveLimit=0",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={max(SLOTS, os.cpu_count() or 1)} "
        "RealMemory=16000 State=UNKNOWN",  # MB, for --mem (config_overrides: whatever this machine has)
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _start_munge(root: Path) -> None:
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    subprocess.run(
        [
            "munged",
            "--force",
            f"--socket={root}/munge.socket",
            f"--key-file={key}",
            f"--pid-file={root}/munged.pid",
            f"--log-file={root}/munged.log",
            f"--seed-file={root}/munged.seed",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _wait_idle(cluster: Cluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        try:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%t").strip()
        except RuntimeError as e:
            state = str(e)
        if state in ("idle", "mix", "alloc"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Slurm node did not come up (state {state!r}):\n{cluster.logs()}")


@contextmanager
def slurm_cluster() -> Iterator[Cluster]:
    """munged + slurmctld + slurmd on 127.0.0.1; yields the cluster, stops every daemon after."""
    if why := unavailable():
        print(f"skipping the Slurm tests: {why}")
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="sweeper-slurm-"))
    for d in ("state", "spool"):
        (root / d).mkdir()
    node = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, node))
    cluster = Cluster(conf, root)
    try:
        _start_munge(root)
        subprocess.run(["slurmctld", "-i", "-f", str(conf)], env=cluster.env, check=True, timeout=30)
        subprocess.run(["slurmd", "-f", str(conf), "-N", node], env=cluster.env, check=True, timeout=30)
        _wait_idle(cluster)
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        _stop(root)
        why = f"the one-node Slurm cluster did not start: {str(e)[:2000]}"
        print(f"skipping the Slurm tests: {why}")
        pytest.skip(why)
    try:
        yield cluster
    finally:
        _stop(root)


def _stop(root: Path) -> None:
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = root / f"{name}.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            continue
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(root, ignore_errors=True)
