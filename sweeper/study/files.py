"""Where study files are and how they are read: the study folders, the YAML loader, ``base:`` chains.

A study is named by a file: ``NAME`` is looked up in ``$SWEEPER_STUDIES_DIR`` alone when set, else in
``./studies`` and then the shipped studies, first match winning. Files named ``_*.yaml`` are bases.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sweeper.errors import SweeperError, did_you_mean
from sweeper.study import bases
from sweeper.study.config import GROUPS

SHIPPED = Path(str(resources.files("sweeper") / "studies"))  # package data: in a wheel too


def study_dirs() -> list[Path]:
    """Where study names are looked up, first match wins: ``$SWEEPER_STUDIES_DIR`` alone when set, else
    ``./studies`` (your own studies) and then the shipped ones, so a local folder adds, never hides."""
    if os.environ.get("SWEEPER_STUDIES_DIR"):
        return [Path(os.environ["SWEEPER_STUDIES_DIR"])]
    local = Path.cwd() / "studies"
    dirs = [local] if local.is_dir() and local.resolve() != SHIPPED else []
    return [*dirs, SHIPPED]


def studies_dir() -> Path:
    """The first folder study names are looked up in (see :func:`study_dirs`)."""
    return study_dirs()[0]


def available_studies() -> list[Path]:
    """Every study file by name (first folder wins); files named ``_*.yaml`` are bases, not listed."""
    found: dict[str, Path] = {}
    for d in study_dirs():
        for p in sorted(d.glob("*.yaml")):
            if not p.name.startswith("_"):
                found.setdefault(p.stem, p)
    return sorted(found.values(), key=lambda p: p.stem)


def find(name_or_path: str) -> Path:
    """Resolve a study name (``NAME`` in the study folders) or a path to a study file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SweeperError(f"study file {p} does not exist")
        return p
    for d in study_dirs():
        if (d / f"{name_or_path}.yaml").is_file():
            return d / f"{name_or_path}.yaml"
    names = [s.stem for s in available_studies()]
    raise SweeperError(
        f"unknown study {name_or_path!r}{did_you_mean(name_or_path, names)}; "
        f"available in {', '.join(map(str, study_dirs()))}: {', '.join(names) or 'none'}"
    )


_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class StudyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with two fixes for hand-written study files.

    ``3e-3`` is a float, as in YAML 1.2 (YAML 1.1 wants ``3.0e-3`` and reads ``3e-3`` as a string); and a
    key written twice in one mapping is an error naming the line, where PyYAML keeps the last silently.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                mark = first.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base constructor says so
                continue
            if mark is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {mark.line + 1})", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


StudyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))


def _read(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise SweeperError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{path.read_bytes()[e.start]:02x}); "
            "study files are read as UTF-8: save it as UTF-8"
        ) from None
    except OSError as e:
        raise SweeperError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return yaml.load(text, Loader=StudyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SweeperError(f"{path}:{where}: not valid YAML: {problem}") from None


class StudyDumper(yaml.SafeDumper):
    """Writes what :class:`StudyLoader` reads back as written: the string ``'3e-3'`` stays quoted (the
    loader takes YAML 1.2's ``3e-3`` as a float); multi-line strings as literal blocks."""


StudyDumper.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
StudyDumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def merged_text(path: Path, name: str) -> str:
    """The study file merged over its ``base:`` chain, as :func:`read_chain` reads it, with its name written
    in: one file that loads as the same study anywhere, without its bases (a Kubernetes pod's ConfigMap)."""
    raw, chain = read_chain(path, [])
    doc = {"name": name, **{k: v for k, v in raw.items() if k not in ("name", "base")}}
    merged = f", merged over {', '.join(p.name for p in chain)}" if chain else ""
    return f"# {path.name}{merged}\n" + yaml.dump(doc, Dumper=StudyDumper, sort_keys=False, width=110)


def read_chain(path: Path, seen: list[Path]) -> tuple[Any, list[Path]]:
    """The file's document merged over its bases', and the chain of base files (nearest first)."""
    raw = _read(path)
    if not isinstance(raw, dict) or "base" not in raw:
        return raw, []
    ref = raw["base"]
    if not isinstance(ref, str) or not ref:
        raise SweeperError(f"{path}: base: must be a study name or a path to a study file, got {ref!r}")
    base_path = _find_base(ref, path)
    if base_path.resolve() in [p.resolve() for p in [*seen, path]]:
        raise bases.chain_error([*seen, path], base_path)
    base_raw, chain = read_chain(base_path, [*seen, path])
    if not isinstance(base_raw, dict):
        raise SweeperError(f"{base_path}: a study file is a YAML mapping (it is the base of {path})")
    merged = bases.merge(bases.absolute_root(base_raw, base_path), raw, GROUPS)
    return merged, [base_path, *chain]


def _find_base(ref: str, child: Path) -> Path:
    """A base named by path (relative to the child's folder) or by study name (the child's folder first)."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or "/" in ref:
        p = p if p.is_absolute() else child.parent / p
        if not p.is_file():
            raise SweeperError(f"{child}: base: study file {p} does not exist")
        return p
    sibling = child.parent / f"{ref}.yaml"
    if sibling.is_file():
        return sibling
    try:
        return find(ref)
    except SweeperError as e:
        raise SweeperError(f"{child}: base: {e}") from None
