"""Study files that build on others: ``base: other-study`` merges a chain of files, the child's keys winning.

Merging is deep for mappings and replaces everything else (lists, scalars). ``fixed`` and ``space`` are
merged by dotted parameter name (``aug: {hflip: true}`` and ``aug.hflip`` are the same key), and a
parameter the child searches leaves the base's ``fixed`` (and the other way round). ``name`` is never
inherited: a study is named by its own file. A relative ``data.root`` is relative to the file that says it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweeper.errors import SweeperError

NOT_INHERITED = ("name", "base")


EITHER = {"objective": "objectives", "objectives": "objective"}  # a child's choice replaces the base's


def merge(base: dict[str, Any], child: dict[str, Any], groups: tuple[str, ...]) -> dict[str, Any]:
    """The child study document over its base's."""
    out = {k: v for k, v in base.items() if k not in NOT_INHERITED}
    for key, value in child.items():
        if key in ("fixed", "space", "base"):
            continue
        if key in EITHER:  # objective and objectives replace each other
            out.pop(EITHER[key], None)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep(out[key], value)
        else:
            out[key] = value
    fixed = flatten(base.get("fixed") or {}, groups)
    space = dict(base.get("space") or {})
    child_fixed = flatten(child.get("fixed") or {}, groups)
    child_space = dict(child.get("space") or {})
    for k in child_space:
        fixed.pop(k, None)  # searched now
    for k in child_fixed:
        space.pop(k, None)  # pinned now
    if fixed or child_fixed:
        out["fixed"] = {**fixed, **child_fixed}
    if space or child_space:
        out["space"] = {**space, **child_space}
    return out


def _deep(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flatten(raw: dict[str, Any], groups: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    """``{aug: {hflip: true}}`` -> ``{"aug.hflip": True}``; other values as they are."""
    if not isinstance(raw, dict):  # a base's unchecked `fixed:` may be anything
        return raw  # not a mapping: spec.parse names the problem
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in groups:
            out.update(flatten(v, groups, f"{key}."))
        else:
            out[key] = v
    return out


def absolute_root(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """A relative ``data.root`` made absolute against the file that says it, where that folder exists."""
    data = raw.get("data")
    root = data.get("root") if isinstance(data, dict) else data
    if not isinstance(root, str) or root.startswith("builtin:") or Path(root).is_absolute():
        return raw
    here = (path.parent / root).resolve()
    if not here.exists():
        return raw
    new_data = {**data, "root": str(here)} if isinstance(data, dict) else str(here)
    return {**raw, "data": new_data}


def chain_error(chain: list[Path], nxt: Path) -> SweeperError:
    names = " -> ".join(p.stem for p in [*chain, nxt])
    return SweeperError(
        f"{chain[-1]}: base: the bases form a cycle ({names}); a study cannot build on itself"
    )
