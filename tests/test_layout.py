"""The package layout holds: imports run down between packages, never in a circle, never into another
package's private names; the trial side (train/, data/) knows nothing of Optuna, MLflow or the parent;
study/ imports nothing heavy at module level; every third-party package imported is declared."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "sweeper"

# Which packages each package may import (besides itself and the root modules below). A package absent
# from a value is above it or beside it: importing it would run back up, or tie two rooms together.
ALLOWED: dict[str, set[str]] = {
    "study": set(),
    "data": {"study"},
    "train": {"study", "data"},
    "store": {"study", "data"},  # the record fingerprints the image folder
    "sweep": {"study", "data", "train", "store"},
    "results": {"study", "store"},
    "submit": {"study", "data", "train", "store", "results"},
    "launch": {"store"},
    "cli": {"study", "data", "train", "store", "sweep", "results", "submit", "launch"},
}
# the ground floor: any package may import these, they import nothing
ROOT_BASE = {"errors", "faults", "meter", "servable"}
ROOT_TOP = {"__main__", "predictor"}  # the entry point and the old predictor path (a shim)
TRIAL_SIDE = ("train", "data")
HEAVY = {"torch", "torchvision", "timm", "optuna", "mlflow"}


@dataclass(frozen=True)
class Edge:
    src: str  # importing module, dotted
    dst: str  # imported module, dotted
    names: tuple[str, ...]
    top_level: bool  # at module level (not in a function or under TYPE_CHECKING)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, top: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(node, False)
        else:
            inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _imports(node, inner)


def edges(known: dict[str, Path]) -> list[Edge]:
    out = []
    for mod, path in known.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node, top in _imports(ast.parse(path.read_text()), True):
            if isinstance(node, ast.Import):
                targets = [(a.name, ()) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from pkg import mod` imports a module; `from mod import name` a name
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
                targets = [(s, ()) for s in subs] or [(base, tuple(a.name for a in node.names))]
            for dst, names in targets:
                if dst.split(".")[0] == "sweeper":
                    out.append(Edge(mod, dst, names, top, node.lineno))
    return out


def room(mod: str) -> str:
    """The package a module belongs to (``study``), or the root module's own name (``errors``)."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_packages_import_down_only() -> None:
    bad = []
    for e in edges(modules()):
        src, dst = room(e.src), room(e.dst)
        if src == dst or dst in ROOT_BASE or src in ROOT_TOP or dst == "__init__":
            continue
        if src in ROOT_BASE or dst not in ALLOWED.get(src, set()):
            bad.append(f"{e.src}:{e.line} imports {e.dst} ({src} may import {sorted(ALLOWED.get(src, ()))})")
    assert not bad, "imports that run up or across:\n" + "\n".join(bad)


def test_no_import_circles() -> None:
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for e in edges(known):
        dst = e.dst if e.dst in known else e.dst.rpartition(".")[0]
        if dst in known and dst != e.src and known[dst].name != "__init__.py":
            graph[e.src].add(dst)
    circles = _cycles(graph)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_private_names_across_packages() -> None:
    bad = [
        f"{e.src}:{e.line} takes {', '.join(n for n in e.names if n.startswith('_'))} from {e.dst}"
        for e in edges(modules())
        if room(e.src) != room(e.dst)
        and room(e.src) not in ROOT_TOP
        and any(n.startswith("_") and not n.startswith("__") for n in e.names)
    ]
    assert not bad, "\n".join(bad)


def test_no_private_attributes_across_packages() -> None:
    """``module._name`` on a module of another package reaches into it as surely as an import does."""
    known = modules()
    bad = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> the sweeper module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sweeper"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in known:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and room(aliases[node.value.id]) != room(mod)
            ):
                bad.append(f"{mod}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "\n".join(bad)


def _third_party(path: Path, top_only: bool) -> set[str]:
    found = set()
    for node, top in _imports(ast.parse(path.read_text()), True):
        if top_only and not top:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_trial_side_knows_no_optuna_mlflow_or_parent() -> None:
    bad = [
        f"{mod} imports {sorted(hit)}"
        for mod, path in modules().items()
        if room(mod) in TRIAL_SIDE and (hit := _third_party(path, False) & {"optuna", "mlflow"})
    ]
    assert not bad, "\n".join(bad)


def test_study_imports_nothing_heavy_at_module_level() -> None:
    bad = [
        f"{mod} imports {sorted(hit)} at module level"
        for mod, path in modules().items()
        if room(mod) == "study" and (hit := _third_party(path, True) & HEAVY)
    ]
    assert not bad, "\n".join(bad)


def _declared() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in meta["dependencies"]}


def test_every_imported_package_is_declared() -> None:
    dists = importlib.metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    optional = {"psutil", "pynvml"}  # the `system` extra: imported only where it is installed
    bundled = {"servable"}  # sweeper.servable, as the logged models carry it
    imported = (
        set().union(*(_third_party(p, False) for p in SRC.rglob("*.py"))) - stdlib - {"sweeper"} - bundled
    )
    missing = []
    for name in sorted(imported - optional):
        owners = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
        if not owners & _declared():
            missing.append(f"{name} (from {sorted(owners)})")
    assert not missing, "imported but not declared in pyproject.toml: " + ", ".join(missing)


READ_ONLY = (
    "sweeper.results.views",
    "sweeper.results.report",
    "sweeper.store.record",
    "sweeper.sweep.doctor",
)
"""What ``show``, ``report``, ``studies`` and ``doctor`` load: a study's record, never a tensor."""


def test_commands_that_read_a_study_load_no_torch() -> None:
    known = modules()
    graph: dict[str, set[str]] = {}
    for e in edges(known):
        if e.top_level:
            graph.setdefault(e.src, set()).add(e.dst.rpartition(".")[0] if e.dst not in known else e.dst)
    seen, todo = set(), list(READ_ONLY)
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in known:
            continue
        seen.add(mod)
        todo += graph.get(mod, ())
    bad = [
        f"{mod} imports {sorted(hit)} at module level, so {', '.join(READ_ONLY)} load it"
        for mod in sorted(seen)
        if (hit := _third_party(known[mod], True) & {"torch", "torchvision", "timm"})
    ]
    assert not bad, "\n".join(bad)


SERVABLE = SRC / "servable"
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml"}  # distribution -> the name it is imported by


def test_the_servable_package_stands_alone() -> None:
    """What every logged model bundles as ``servable`` imports no sweeper module (its own modules
    relatively, the models-from-code file by the bundled name) and nothing its pinned requirements lack."""
    from sweeper import servable

    bad = []
    for path in sorted(SERVABLE.rglob("*.py")):
        for node, _top in _imports(ast.parse(path.read_text()), True):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if not isinstance(node, ast.ImportFrom) or not node.level:
                bad += [
                    f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "sweeper"
                ]
    assert not bad, "\n".join(bad)
    needed = set().union(*(_third_party(p, False) for p in SERVABLE.rglob("*.py"))) - set(
        sys.stdlib_module_names
    )
    provided = {IMPORT_NAMES.get(d, d) for d in servable.REQUIREMENTS} | {"servable"}
    assert needed <= provided, f"servable imports {sorted(needed - provided)}, not in servable.REQUIREMENTS"
