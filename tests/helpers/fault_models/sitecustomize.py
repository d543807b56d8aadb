"""Registers the test-only timm models of ``fault_zoo`` in every process that imports timm.

A folder on PYTHONPATH holding ``sitecustomize.py`` is imported by every Python process started with
that environment, the trial processes that ``run-study`` spawns included, so these models exist there
exactly as a user's own registered model would. They are registered the moment timm has loaded, not at
start-up: a process that never imports timm (the sweep process, read-only commands) does not pay for
importing it here (about 4 s of CPU per process).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType


class _AfterTimm(importlib.abc.MetaPathFinder):
    """Finds timm as usual, and imports ``fault_zoo`` once timm's own module has run."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            importlib.import_module("fault_zoo")

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    importlib.import_module("fault_zoo")
else:
    sys.meta_path.insert(0, _AfterTimm())
