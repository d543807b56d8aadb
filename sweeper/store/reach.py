"""The study's servers as a cluster job sees them: URLs fit to print, and a check that they answer.

A job submitted to Slurm or Kubernetes may wait in a queue for hours; a typo in its storage URL should
fail now, at the prompt, not in every worker's log later. Only a TCP connection is tried (no login),
so the check needs no driver and never sends a password anywhere.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from sweeper.errors import SweeperError

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "http": 80, "https": 443}
TIMEOUT_S = 5.0  # a server on the same network answers in milliseconds; a firewall never does


def mask(url: str) -> str:
    """``url`` with its password replaced by ``***``, so that it can be printed or written."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def scheme(url: str) -> str:
    """``postgresql`` for ``postgresql+psycopg://...``: the database or protocol, without the driver."""
    return urlsplit(url).scheme.split("+")[0].lower()


def address(url: str) -> tuple[str, int]:
    """The host and port a URL's server listens on (the scheme's default port when none is given)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise SweeperError(f"{mask(url)!r}: the port is not a number") from None
    port = port or DEFAULT_PORTS.get(scheme(url))
    if not parts.hostname or port is None:
        raise SweeperError(
            f"{mask(url)!r} names no server host and port (e.g. postgresql://user@host:5432/db)"
        )
    return parts.hostname, port


def check(url: str, what: str, timeout: float = TIMEOUT_S) -> None:
    """Raise a one-line error unless a TCP connection to ``url``'s server opens within ``timeout`` s."""
    host, port = address(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        why = f"no answer within {timeout:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise SweeperError(
            f"{what} {mask(url)} is not reachable from here ({host}:{port}: {why}); start it, or fix the URL"
        ) from None


def is_loopback(url: str) -> bool:
    """True for a server on this machine only (localhost, 127.x, ::1): other nodes cannot reach it."""
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def servers(storage: str | None, tracking: str | None) -> tuple[str, str]:
    """The study's storage and MLflow URLs for workers on other machines (:func:`check` them after).

    Both must be servers: a SQLite file or a local MLflow folder has one writer (``run-study`` refuses a
    second one) and is not on the other nodes anyway. Unset arguments come from ``$SWEEPER_STORAGE``
    and ``$MLFLOW_TRACKING_URI``, as for ``run-study``.
    """
    storage = storage or os.environ.get("SWEEPER_STORAGE")
    tracking = tracking or os.environ.get("MLFLOW_TRACKING_URI")
    if not storage or scheme(storage) not in ("postgresql", "postgres", "mysql"):
        got = f", got {mask(storage)!r}" if storage else ""
        raise SweeperError(
            "workers on several machines share the study through a database server: "
            f"--storage postgresql://USER:PASSWORD@HOST:5432/DB (or $SWEEPER_STORAGE){got}"
        )
    if not tracking or scheme(tracking) not in ("http", "https", "postgresql", "postgres", "mysql"):
        got = f", got {mask(tracking)!r}" if tracking else ""
        raise SweeperError(
            "workers on several machines log to one MLflow server: "
            f"--tracking-uri http://HOST:5000 (or $MLFLOW_TRACKING_URI){got}"
        )
    return storage, tracking


def check_servers(storage: str, tracking: str) -> None:
    check(storage, "the study storage")
    check(tracking, "the MLflow tracking server")
