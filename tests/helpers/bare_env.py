"""A Python with every installed dependency but not sweeper: where a logged model has to stand alone.

A venv whose site-packages holds a ``.pth`` naming this environment's site-packages. A plain path line in
a ``.pth`` adds that folder to ``sys.path`` without running the ``.pth`` files inside it, so sweeper's
editable-install finder never loads: torch, timm and MLflow import there, ``sweeper`` does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.servers import free_port, stop_group


def without_project(root: Path) -> dict[str, str]:
    """Make the venv at ``root``; return the environment to run its ``bin/python`` in (its ``bin`` alone
    on PATH before the system's, so MLflow's ``uvicorn`` is this venv's, and no PYTHONPATH)."""
    venv.create(root, with_pip=False, symlinks=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    uvicorn = root / "bin" / "uvicorn"  # what `mlflow models serve` runs, found on PATH
    main = "import sys\nfrom uvicorn.main import main\nsys.exit(main())\n"
    uvicorn.write_text(f"#!{root / 'bin' / 'python'}\n{main}")
    uvicorn.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{root / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(root)}


def python(env: dict[str, str]) -> str:
    return str(Path(env["VIRTUAL_ENV"]) / "bin" / "python")


@contextmanager
def serving(model_uri: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """``mlflow models serve --env-manager local`` in that environment on 127.0.0.1; yields its URL."""
    port = free_port()
    cmd = [python(env), "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*cmd, "-h", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # the server and the uvicorn it execs: one group to stop
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 240
            while not _answers(f"{url}/ping"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow models serve did not start: {log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            stop_group(proc, grace=10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def invoke(url: str, inputs: list[Any]) -> tuple[int, Any]:
    """POST ``{"inputs": inputs}`` to ``/invocations``: the HTTP status and the decoded JSON answer."""
    req = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"inputs": inputs}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


LOAD = """
import base64, json, sys
import mlflow
uris, files = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"sweeper_loaded": False}
for how, uri in uris.items():
    model = mlflow.pyfunc.load_model(uri)
    by_path = model.predict(files)
    by_bytes = model.predict([base64.b64encode(open(f, "rb").read()).decode() for f in files])
    out[how] = {
        "paths": [p.pred_label for p in by_path],
        "bytes": [p.pred_label for p in by_bytes],
        "probs": [p.probs for p in by_path],
        "signature": str(model.metadata.signature.outputs),
    }
out["sweeper_loaded"] = any(m == "sweeper" or m.startswith("sweeper.") for m in sys.modules)
print(json.dumps(out))
"""
"""Load each model with ``mlflow.pyfunc.load_model`` and predict the files as paths and as base64 bytes."""


def start_loading(uris: dict[str, str], files: list[Path], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start :data:`LOAD` in that environment (it runs while a server starts: 2 cores, mostly imports)."""
    args = [json.dumps(uris), json.dumps([str(f) for f in files])]
    return subprocess.Popen(
        [python(env), "-c", LOAD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def loaded(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """What :func:`start_loading`'s models answered."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def imports_sweeper(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python(env), "-c", "import sweeper"], capture_output=True, text=True, env=env, timeout=60
    )
