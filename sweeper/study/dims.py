"""Searched dimensions: their study-file syntax (``{float: [lo, hi], log: true}``, ``{int: ...}``,
``{choice: [...]}``, ``{bool: true}``), checked against the parameter each one searches."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from sweeper.errors import did_you_mean
from sweeper.study.checks import RULES, coerce
from sweeper.study.config import DEFAULTS, PARAM_TYPES, plain


@dataclass(frozen=True)
class Dim:
    """One searched dimension. ``kind`` picks the Optuna suggest call."""

    kind: Literal["float", "int", "choice", "bool"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # sampled only where each key takes one of its values

    def active(self, values: dict[str, Any]) -> bool:
        """Whether the dimension is sampled, given the values of the parameters its condition reads."""
        return all(k in values and values[k] in allowed for k, allowed in self.when)

    def grid(self) -> list[Any]:
        """The values a grid search visits; only discrete dims have one."""
        if self.kind == "bool":
            return [False, True]
        if self.kind == "choice":
            return list(self.choices)
        step = self.step if self.step is not None else (1 if self.kind == "int" and not self.log else None)
        if step is None or self.log:
            raise ValueError("a grid needs discrete values: give this dim a `step` (and no `log`)")
        assert self.low is not None and self.high is not None
        n = int(round((self.high - self.low) / step))
        vals = [self.low + i * step for i in range(n + 1)]
        return [int(v) for v in vals] if self.kind == "int" else vals


def _parse_dim(key: str, raw: object) -> Dim:
    """Parse ``{float: [lo, hi], log: true}``, ``{int: [lo, hi]}``, ``{choice: [...]}``, ``{bool: true}``."""
    if not isinstance(raw, dict):
        raise ValueError(
            "a dimension is a mapping such as {float: [1e-4, 1e-2], log: true}, {int: [0, 3]}, "
            f"{{choice: [a, b]}} or {{bool: true}}; got {raw!r}"
        )
    extra = set(raw) - {"float", "int", "choice", "bool", "log", "step", "when"}
    if extra:
        bad = sorted(extra)[0]
        raise ValueError(f"unknown dimension option {bad!r}{did_you_mean(bad, ['log', 'step', 'when'])}")
    when = parse_when(raw.get("when"))
    return dataclasses.replace(_parse_kind(key, {k: v for k, v in raw.items() if k != "when"}), when=when)


def parse_when(raw: object) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``{optimizer: sgd}`` or ``{optimizer: {in: [sgd, adamw]}, freeze_depth: 0}``: every key must match."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"when: must be a mapping such as {{optimizer: sgd}}, got {raw!r}")
    out = []
    for key, cond in raw.items():
        key = str(key)
        if key not in PARAM_TYPES:
            raise ValueError(f"when: unknown parameter {key!r}{did_you_mean(key, PARAM_TYPES)}")
        values = cond["in"] if isinstance(cond, dict) and set(cond) == {"in"} else [cond]
        if not isinstance(values, list) or not values:
            raise ValueError(f"when.{key}: `in:` needs a non-empty list, got {values!r}")
        try:
            out.append((key, tuple(coerce(key, v) for v in values)))
        except ValueError as e:
            raise ValueError(f"when.{key}: {e}") from None
    return tuple(out)


def _parse_kind(key: str, raw: dict[str, Any]) -> Dim:
    """The dimension itself, without its condition."""
    kinds = [k for k in ("float", "int", "choice", "bool") if k in raw]
    if len(kinds) != 1:
        raise ValueError("a dimension needs exactly one of float, int, choice, bool")
    kind = kinds[0]
    if kind == "bool":
        if raw["bool"] is not True:
            raise ValueError("write a boolean dimension as {bool: true}")
        _check_values(key, [False, True])
        return Dim("bool")
    if kind == "choice":
        choices = raw["choice"]
        if not isinstance(choices, list) or len(choices) < 1:
            raise ValueError(f"choice needs a non-empty list, got {choices!r}")
        return Dim("choice", choices=tuple(_check_values(key, choices)))
    low, high, log, step = _parse_range(kind, raw)
    _check_values(key, [int(b) if kind == "int" else float(b) for b in (low, high)])
    if kind == "int" and key in RULES:  # "odd" must hold for every value sampled, not only the ends
        _check_values(key, list(range(low, high + 1, 1 if log or step is None else int(step))))
    return Dim(kind, low=low, high=high, log=log, step=step)  # type: ignore[arg-type]


def _parse_range(kind: str, raw: dict[str, Any]) -> tuple[Any, Any, bool, Any]:
    """``float: [low, high]`` or ``int: [...]`` with its ``log`` and ``step``, checked."""
    bounds = raw[kind]
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
    ):
        raise ValueError(f"{kind} needs [low, high], got {bounds!r}")
    low, high = bounds
    if kind == "int" and not all(isinstance(b, int) for b in bounds):
        raise ValueError(f"int bounds must be integers, got {bounds!r}")
    if not low < high:
        raise ValueError(f"`low < high` must hold, but got (low={low}, high={high})")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ValueError(f"a log-scaled range needs low > 0, got low={low}")
    step = raw.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ValueError(f"step must be a positive number, got {step!r}")
    if step is not None and log:
        raise ValueError("step and log cannot be combined")
    return low, high, log, step


def _check_values(key: str, values: list[Any]) -> list[Any]:
    out = []
    for v in values:
        try:
            out.append(coerce(key, v))
        except ValueError as e:
            raise ValueError(f"value {v!r} does not fit this parameter: {e}") from None
    return out


def dim_document(d: Dim) -> dict[str, Any]:
    """A dimension in study-file syntax: the inverse of :func:`_parse_dim`."""
    if d.kind == "bool":
        return {"bool": True} | _when_document(d)
    if d.kind == "choice":
        return {"choice": plain(d.choices)} | _when_document(d)
    out: dict[str, Any] = {d.kind: [d.low, d.high]}
    if d.log:
        out["log"] = True
    if d.step is not None:
        out["step"] = d.step
    return out | _when_document(d)


def _when_document(d: Dim) -> dict[str, Any]:
    if not d.when:
        return {}
    return {"when": {k: v[0] if len(v) == 1 else {"in": plain(v)} for k, v in d.when}}


def settle(space: dict[str, Dim], fixed: dict[str, Any]) -> tuple[dict[str, Dim], list[tuple[str, str]]]:
    """Decide the conditions on parameters that are not searched (fixed, or at their default): each one
    holds (dropped from the condition) or does not (the dimension is never sampled: reported, left out)."""
    out: dict[str, Dim] = {}
    never: list[tuple[str, str]] = []
    for key, dim in space.items():
        kept = []
        for k, allowed in dim.when:
            if k in space:
                kept.append((k, allowed))
                continue
            value = fixed.get(k, DEFAULTS[k])
            if value not in allowed:
                never.append(
                    (key, f"{k} is {value!r} here (not searched), never {'/'.join(map(str, allowed))}")
                )
                break
        else:
            out[key] = dataclasses.replace(dim, when=tuple(kept))
    return out, never
