"""Real servers for the scale-out tests, started on 127.0.0.1 by the tests themselves.

PostgreSQL comes from Debian's ``postgresql`` package (``initdb`` + ``pg_ctl`` into a temporary folder,
as the ``postgres`` user when the tests run as root, since the server refuses root); the MLflow
tracking server is ``mlflow server`` from the project's own environment, backed by that PostgreSQL.
``.ci/run`` installs the package; without it these tests are skipped, except in CI, where they fail.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries Debian installed, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    bindir = pg_bin()
    if bindir is None:
        msg = "PostgreSQL server binaries not found: apt-get install postgresql (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return bindir


class Cluster:
    """A throwaway PostgreSQL cluster that a test can stop and start again (a database outage)."""

    def __init__(self, password: str | None = None) -> None:
        """``password``: logins need it (scram-sha-256); None: any login is let in (trust)."""
        self.bindir = require_postgres()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="sweeper-pg-", dir="/tmp"))  # not under a root-only folder
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql://sweeper@127.0.0.1:{self.port}"
        auth = ["--auth=trust"]
        if password is not None:
            (self.root / "pw").write_text(password)
            auth = ["--auth=scram-sha-256", f"--pwfile={self.root / 'pw'}"]
            if self.as_user:
                shutil.chown(self.root / "pw", "postgres")
        self._ctl("initdb", "-D", str(self.data), "-U", "sweeper", *auth, "-E", "UTF8", "--no-sync")

    def _ctl(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / program), *args], check=True, capture_output=True)

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        )
        log = str(self.root / "log")
        self._ctl("pg_ctl", "-D", str(self.data), "-o", opts, "-l", log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def cluster(password: str | None = None) -> Iterator[Cluster]:
    c = Cluster(password)
    c.start()
    try:
        yield c
    finally:
        c.remove()


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields ``postgresql://sweeper@127.0.0.1:PORT`` (no database)."""
    with cluster() as c:
        yield c.url


def create_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, port: int | None = None) -> Iterator[str]:
    """``mlflow server`` on ``port`` (default: a free one), backed by ``backend_uri``; yields its http URL."""
    port = port or free_port()
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            backend_uri.replace("postgresql://", "postgresql+psycopg://"),
            "--artifacts-destination",
            str(artifacts),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # MLflow's job runner (huey consumers for its GenAI jobs) starts 5+ extra processes that import
        # mlflow and poll; sweeper uses no MLflow jobs, and on 2 cores they slow every test near a server.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (artifacts.parent / "mlflow-server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server did not start: {tail}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc, grace=5)
        log.close()


class Relay:
    """A TCP relay on 127.0.0.1 in front of a server: ``cut()`` makes the server unreachable to its
    clients (open connections reset, new ones refused, as when it goes down) and ``restore()`` brings it
    back on the same port, at once, without restarting the server itself."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target, self.port = target_port, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._open = self._open, []
        if listener is not None:  # shutdown first: it wakes the thread blocked in accept, which
            with contextlib.suppress(OSError):  # else holds the port until its next connection
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in conns:
            with contextlib.suppress(OSError):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()  # linger 0: a reset, as a dead server's host sends

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def stop_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM to a server started in a process group of its own; SIGKILL after ``grace`` seconds."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
