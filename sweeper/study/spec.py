"""Study files: their schema, validation with clear errors, and the study as it runs.

A study file declares *fixed* trial parameters and a *space* of searched ones. Every key in either
is a field of :class:`TrialConfig` (dotted for nested groups: ``aug.cutmix``, ``eval.tta``); the
config itself lives in :mod:`sweeper.study.config`, the checks of its values in
:mod:`sweeper.study.checks`, the searched dimensions in :mod:`sweeper.study.dims`. Their public names are
re-exported here for the parent side; the trial process imports the config module alone.

This module imports nothing heavy: the CLI and every other module may import it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sweeper.errors import SweeperError, did_you_mean
from sweeper.study import bases, cells, files, starts
from sweeper.study import objectives as objectives_lib
from sweeper.study.checks import (
    _NON_NEG,
    _ONE_UP,
    _POSITIVE,
    _PROB,
    LIMITS,
    RULES,
    Fail,
    Range,
    _number,
    coerce,
    combination,
    config_from_flat,
    known_key,
    type_name,
)
from sweeper.study.config import (
    DEFAULT_MAX_PIXELS,
    DEFAULTS,
    FOLDS_KEEP_ONE,
    GROUPS,
    PARAM_TYPES,
    AugConfig,
    Checkpoint,
    EvalConfig,
    Optimizer,
    SensitivityConfig,
    TrialConfig,
    build_config,
    plain,
)
from sweeper.study.design import Design
from sweeper.study.design import parse as _parse_design
from sweeper.study.design import seed_dim as _seed_dim
from sweeper.study.dims import Dim, _parse_dim, dim_document, settle
from sweeper.study.files import SHIPPED, StudyLoader, available_studies, find, studies_dir, study_dirs

# fmt: off
__all__ = [  # the schema's public names, wherever they are defined
    "DEFAULTS", "SHIPPED", "StudyLoader", "study_dirs", "settle", "DEFAULT_MAX_PIXELS", "GROUPS", "LIMITS",
    "PARAM_TYPES", "RULES", "AugConfig", "Checkpoint", "Design", "Dim", "EvalConfig", "Optimizer", "Range",
    "SensitivityConfig", "Study", "TrialConfig", "available_studies", "build_config", "coerce",
    "config_from_flat", "dim_document", "find", "known_key", "load", "parse", "plain", "studies_dir",
    "to_document", "type_name"
]
# fmt: on


# ---- the study file ---------------------------------------------------------------------------

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "nsga2")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "wilcoxon", "none")
METRICS = objectives_lib.METRICS
TOP_KEYS = (
    "name",
    "description",
    "data",
    "objective",
    "objectives",
    "epochs",
    "sampler",
    "pruner",
    "constraints",
    "fixed",
    "space",
    "enqueue",
    "keep_weights",
    "design",
    "cells",
)
CONSTRAINTS = ("max_params",)
SECTION_ARGS: dict[str, tuple[type, Range, str | None]] = {
    "seed": (int, Range(0, 2**32 - 1), None),  # or null
    "n_startup_trials": (int, _NON_NEG, None),
    "n_ei_candidates": (int, _ONE_UP, None),
    "sigma0": (float, _POSITIVE, None),
    "n_warmup_steps": (int, _NON_NEG, None),
    "interval_steps": (int, _ONE_UP, None),
    "n_min_trials": (int, _ONE_UP, None),
    "percentile": (float, Range(0, 100, low_open=True, high_open=True), None),
    "min_resource": (int, _ONE_UP, "auto"),
    "max_resource": (int, _ONE_UP, "auto"),
    "reduction_factor": (int, Range(2), None),
    "min_early_stopping_rate": (int, _NON_NEG, None),
    "bootstrap_count": (int, _NON_NEG, None),
    "p_threshold": (float, _PROB, None),
    "n_startup_steps": (int, _NON_NEG, None),
    "population_size": (int, Range(2), None),
    "mutation_prob": (float, _PROB, None),
    "crossover_prob": (float, _PROB, None),
    "swapping_prob": (float, _PROB, None),
}
"""Numeric arguments of Optuna's samplers and pruners, checked when a study loads (others pass through)."""
DATA_KEYS = ("root", "max_pixels", "val_from_train", "duplicates")


@dataclass(frozen=True)
class Study:
    """A validated study file. ``fixed`` and ``space`` are keyed by dotted parameter names."""

    name: str
    path: Path
    data_root: str
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    direction: Literal["maximize", "minimize"] = "maximize"
    costs: tuple[tuple[str, str], ...] = ()  # objectives after the metric: (num_params|latency_ms|gmacs, dir)
    epochs: int = 10
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Dim] = field(default_factory=dict)
    description: str = ""
    max_params: int | None = None  # parameter budget: a config over it is recorded, never trained
    max_pixels: int = DEFAULT_MAX_PIXELS  # data.max_pixels: the largest image (width x height) accepted
    keep_weights: int | None = 5  # complete trials whose weights MLflow keeps (the best); None = all
    enqueue: tuple[dict[str, Any], ...] = ()  # partial configurations tried first (starts.parse_enqueue)
    bases: tuple[str, ...] = field(
        default=(), compare=False
    )  # base files merged under this one, nearest first
    design: Design | None = None  # toggles run as a balanced design (space then holds the repeats' seed)
    val_from_train: float = 0.0  # data.val_from_train: fraction of train (per class) added to val
    duplicates: Literal["error", "warn"] = "error"  # data.duplicates: one image in two splits (or twice)
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)  # named rows over fixed (study.cells)

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """Every objective as (metric, direction), the training metric first: Optuna's values, in order."""
        return [(self.metric, self.direction), *self.costs]

    @property
    def multi(self) -> bool:
        """A trade-off (several objectives): a Pareto front, no pruning."""
        return bool(self.costs)

    def with_overrides(
        self, sets: dict[str, Any] | None = None, epochs: int | None = None, data_root: str | None = None
    ) -> Study:
        """Apply CLI overrides: ``--set`` pins a dimension or replaces a fixed value, ``--epochs`` caps.

        Under a design, ``--set seed=N`` moves the repeats' seeds (N, N+1, ...); a designed dimension
        cannot be pinned.
        """
        fixed, space, design = dict(self.fixed), dict(self.space), self.design
        kept = cells.pin(self.cells, sets or {})
        if self.cells:
            space[cells.CELL] = Dim("choice", choices=tuple(kept))
        for key, value in (sets or {}).items():
            if key == cells.CELL and self.cells:
                continue
            key = known_key(key, f"--set {key}")
            if design is not None and key in design.dims:
                raise SweeperError(
                    f"--set {key}: the study's design varies {key}; pinning it breaks the design's balance "
                    "(start a new study without it in the space)"
                )
            try:
                fixed[key] = coerce(key, value)
            except ValueError as e:
                raise SweeperError(f"--set {key}={value!r}: {e}") from None
            if design is not None and key == "seed":
                design = dataclasses.replace(design, base_seed=fixed[key])
                continue
            space.pop(key, None)
        space, _never = settle(space, fixed)  # a pinned condition: the dimension is always or never sampled
        pinned = [{k: v for k, v in e.items() if k in space} for e in self.enqueue]
        total = self.epochs if epochs is None else min(self.epochs, epochs)
        if epochs is not None and epochs < 1:
            raise SweeperError(f"--epochs must be at least 1, got {epochs}")
        return dataclasses.replace(
            self,
            fixed=fixed,
            space=space,
            epochs=total,
            data_root=data_root or self.data_root,
            enqueue=tuple(e for e in pinned if e),
            design=design,
            cells=kept,
        )

    def resolve(self, params: dict[str, Any]) -> TrialConfig:
        """The frozen config of one trial: defaults, then fixed values, its cell's, then sampled params.

        Raises:
            SweeperError: settings that only mean something together are paired wrongly (one line).
        """
        cell = self.cells.get(params.get(cells.CELL, ""), {})
        sampled = {k: coerce(k, v) for k, v in params.items() if k != cells.CELL}
        values = {"epochs": self.epochs, **self.fixed, **cell, **sampled}
        values["epochs"] = min(int(values["epochs"]), self.epochs)
        cfg = build_config(values)
        combination(cfg)
        return cfg


def load(name_or_path: str) -> Study:
    """Load and validate a study file (merged over its ``base:`` chain); every problem is a SweeperError
    naming the file and key path."""
    path = find(name_or_path)
    raw, chain = files.read_chain(path, [])
    return dataclasses.replace(parse(raw, path), bases=tuple(str(p) for p in chain))


def parse(raw: object, path: Path) -> Study:
    """Validate a study file's parsed YAML; every problem is a SweeperError naming the file and key path."""

    def fail(key: str, msg: str) -> SweeperError:
        return SweeperError(f"{path}: {key}: {msg}")

    if not isinstance(raw, dict):
        raise SweeperError(f"{path}: a study file is a YAML mapping with keys {', '.join(TOP_KEYS)}")
    for k in raw:
        if k not in TOP_KEYS:
            raise fail(str(k), f"unknown key{did_you_mean(str(k), TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise fail("name", f"must be a non-empty string, got {name!r}")
    why = name_problem(name)
    if why:
        raise fail("name", why)
    root, max_pixels, val_from_train = _parse_data(raw.get("data"), path, fail)
    duplicates = _parse_duplicates(raw.get("data"), fail)
    metric, direction, costs = objectives_lib.parse(raw, fail)
    epochs = raw.get("epochs", 10)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs not in _ONE_UP:
        raise fail("epochs", f"must be an integer {_ONE_UP}, got {epochs!r}")
    sampler = _named_section(raw.get("sampler", "tpe"), "sampler", SAMPLERS, fail)
    fixed = _parse_fixed(raw.get("fixed", {}) or {}, fail)
    if fixed.get("checkpoint") == "both" and int(fixed.get("folds", 1)) > 1:
        raise fail("fixed.checkpoint", FOLDS_KEEP_ONE)
    space = _parse_space(raw.get("space", {}) or {}, fixed, sampler["name"] == "grid", fail)
    cell_values = cells.parse(raw.get("cells"), fail)
    space = cells.dimension(cell_values, space, fail)
    max_params = _parse_constraints(raw.get("constraints", {}) or {}, fail)
    if costs:
        objectives_lib.check_multi(raw, sampler["name"], fail)
    design, pruner = _parse_designed(raw, space, fixed, sampler, fail, "none" if costs else "median")
    enqueue = starts.parse_enqueue(raw.get("enqueue"), space, fixed, fail, lambda name: load(name).fixed)
    keep = raw.get("keep_weights", 5)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise fail(
            "keep_weights",
            f"must be an integer >= 1 (the best trials whose weights stay) or null, got {keep!r}",
        )
    return Study(
        name=name,
        path=path,
        data_root=root,
        metric=metric,  # type: ignore[arg-type]  # checked by objectives_lib.parse
        direction=direction,  # type: ignore[arg-type]
        costs=costs,
        epochs=epochs,
        sampler=sampler,
        pruner=pruner,
        fixed=fixed,
        space=space,
        description=str(raw.get("description", "")),
        max_params=max_params,
        max_pixels=max_pixels,
        enqueue=enqueue,
        keep_weights=keep,
        design=design,
        val_from_train=val_from_train,
        duplicates=duplicates,
        cells=cell_values,
    )


def _parse_designed(
    raw: dict[str, Any],
    space: dict[str, Dim],
    fixed: dict[str, Any],
    sampler: dict[str, Any],
    fail: Fail,
    default_pruner: str = "median",
) -> tuple[Design | None, dict[str, Any]]:
    """The design (it adds the repeats' seed to ``space``) and the pruner, which a design allows only off.

    A pruner stops the trials that start slowly, and strong regularisers (CutMix, MixUp, RandAugment)
    start slowly and pay off late: pruning under a design would cut one arm more than the other.
    """
    if raw.get("design") is None:
        return None, _named_section(raw.get("pruner", default_pruner), "pruner", PRUNERS, fail)
    design = _parse_design(raw["design"], space, fixed, fail)
    if sampler["name"] == "grid":
        raise fail("sampler.name", "grid does not combine with a design; the design already picks the runs")
    pruner = _named_section(raw.get("pruner", "none"), "pruner", PRUNERS, fail)
    if pruner["name"] != "none":
        raise fail(
            "pruner",
            f"a design needs pruner none, got {pruner['name']}: a pruner stops slow starters (CutMix, MixUp, "
            "RandAugment pay off late), so it would cut one arm of a toggle more than the other",
        )
    space["seed"] = _seed_dim(design)
    return design, pruner


def _parse_constraints(constraints: object, fail: Fail) -> int | None:
    if not isinstance(constraints, dict):
        raise fail("constraints", f"must be a mapping such as {{max_params: 100000000}}, got {constraints!r}")
    for k in constraints:
        if k not in CONSTRAINTS:
            raise fail(
                f"constraints.{k}",
                f"unknown constraint{did_you_mean(str(k), CONSTRAINTS)}; allowed: {', '.join(CONSTRAINTS)}",
            )
    max_params = constraints.get("max_params")
    if max_params is not None and (
        isinstance(max_params, bool) or not isinstance(max_params, (int, float)) or max_params < 1
    ):
        raise fail("constraints.max_params", f"must be a positive number of parameters, got {max_params!r}")
    return int(max_params) if max_params is not None else None


def _parse_fixed(fixed_raw: object, fail: Fail) -> dict[str, Any]:
    if not isinstance(fixed_raw, dict):
        raise fail("fixed", f"must be a mapping of parameter: value, got {fixed_raw!r}")
    fixed: dict[str, Any] = {}
    for key, value in bases.flatten(fixed_raw, GROUPS).items():
        if key not in PARAM_TYPES:
            raise fail(f"fixed.{key}", f"unknown parameter{did_you_mean(key, PARAM_TYPES)}")
        try:
            fixed[key] = coerce(key, value)
        except ValueError as e:
            raise fail(f"fixed.{key}", str(e)) from None
    return fixed


def _parse_space(space_raw: object, fixed: dict[str, Any], grid: bool, fail: Fail) -> dict[str, Dim]:
    if not isinstance(space_raw, dict):
        raise fail("space", f"must be a mapping of parameter: dimension, got {space_raw!r}")
    space = {str(key): _parse_one_dim(str(key), dim, fixed, grid, fail) for key, dim in space_raw.items()}
    for key, dim in space.items():
        for k, _ in dim.when:
            if k in space and list(space).index(k) > list(space).index(key):
                raise fail(f"space.{key}", f"when: {k} must come before {key} in space (it is sampled first)")
    settled, never = settle(space, fixed)
    if never:
        key, why = never[0]
        raise fail(
            f"space.{key}", f"when: {why}, so {key} would never be sampled; fix the condition or drop it"
        )
    return settled


def _parse_one_dim(key: str, raw: object, fixed: dict[str, Any], grid: bool, fail: Fail) -> Dim:
    if key not in PARAM_TYPES:
        raise fail(f"space.{key}", f"unknown parameter{did_you_mean(key, PARAM_TYPES)}")
    if key in fixed:
        raise fail(f"space.{key}", "is also in fixed; a parameter is either fixed or searched")
    try:
        dim = _parse_dim(key, raw)
    except ValueError as e:
        raise fail(f"space.{key}", str(e)) from None
    if dim.when and grid:
        raise fail(
            f"space.{key}",
            "when: a grid visits every combination; conditional dimensions need another sampler",
        )
    try:
        if grid:
            dim.grid()
    except ValueError as e:
        raise fail(f"space.{key}", f"sampler grid: {e}") from None
    return dim


def _parse_data(data: object, path: Path, fail: Fail) -> tuple[str, int, float]:
    """``data: PATH`` or ``{root: PATH, max_pixels: N, val_from_train: F}``; a relative root is relative to
    the study file."""
    if isinstance(data, str):
        data = {"root": data}
    if not isinstance(data, dict) or not isinstance(data.get("root"), str):
        raise fail("data", "needs {root: PATH} (or root: builtin:digits for the built-in dataset)")
    for k in data:
        if k not in DATA_KEYS:
            raise fail(
                f"data.{k}", f"unknown key{did_you_mean(str(k), DATA_KEYS)}; allowed: {', '.join(DATA_KEYS)}"
            )
    max_pixels = data.get("max_pixels", DEFAULT_MAX_PIXELS)
    n = _number(max_pixels) if not isinstance(max_pixels, str) else None
    if n is None or not n.is_integer() or n not in _ONE_UP:
        raise fail("data.max_pixels", f"must be an integer {_ONE_UP} (width x height), got {max_pixels!r}")
    held = data.get("val_from_train", 0.0)
    frac = _number(held) if not isinstance(held, str) else None
    if frac is None or not 0 <= frac < 1:
        raise fail("data.val_from_train", f"must be a fraction in [0, 1) of the train images, got {held!r}")
    root = data["root"]
    if not root.startswith("builtin:") and not Path(root).is_absolute():
        root = str((path.parent / root).resolve()) if (path.parent / root).exists() else root
    return root, int(n), frac


def _parse_duplicates(data: object, fail: Fail) -> Literal["error", "warn"]:
    value = data.get("duplicates", "error") if isinstance(data, dict) else "error"
    if value not in ("error", "warn"):
        raise fail("data.duplicates", f"must be error or warn, got {value!r}")
    return "warn" if value == "warn" else "error"


def _named_section(raw: object, key: str, names: tuple[str, ...], fail: Fail) -> dict[str, Any]:
    """``tpe`` or ``{name: tpe, seed: 0, ...}`` -> ``{"name": "tpe", "seed": 0, ...}``."""
    section = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(section, dict) or "name" not in section:
        raise fail(key, f"must be a name or {{name: ..., <arguments>}}; one of {', '.join(names)}")
    name = section["name"]
    if name not in names:
        raise fail(
            f"{key}.name",
            f"unknown {key} {name!r}{did_you_mean(str(name), names)}; allowed: {', '.join(names)}",
        )
    for arg, value in section.items():
        if arg in SECTION_ARGS:
            _check_arg(f"{key}.{arg}", value, *SECTION_ARGS[arg], fail)
    return dict(section)


def _check_arg(key: str, value: object, kind: type, rng: Range, alt: str | None, fail: Fail) -> None:
    """One numeric sampler or pruner argument: its type, its range, or its one word (``auto``)."""
    if value is None and key.endswith(".seed") or (alt is not None and value == alt):
        return
    wrong = isinstance(value, (bool, str)) or (kind is int and not isinstance(value, int))
    n = None if wrong else _number(value)
    if n is None or n not in rng:
        what = f"an integer {rng}" if kind is int else f"a number {rng}"
        raise fail(key, f"must be {what}{f' or {alt!r}' if alt else ''}, got {value!r}")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study, or None. It names folders (checkpoints, MLflow artifacts), so
    it is one path part: letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit."""
    if NAME.fullmatch(name):
        return None
    return (
        f"{name!r} cannot name a study: use letters, digits, '.', '_' and '-' (up to 128), starting "
        "with a letter or digit (it names folders, so no '/' or '..')"
    )


def to_document(study: Study) -> dict[str, Any]:
    """A study, overrides applied, in study-file syntax: ``parse(to_document(s), path)`` gives ``s`` back.

    This is what a study's record keeps, so the exact study a sweep ran can be rebuilt from storage.
    """
    doc: dict[str, Any] = {
        "name": study.name,
        "description": study.description,
        "data": {
            "root": study.data_root,
            "max_pixels": study.max_pixels,
            **({"val_from_train": study.val_from_train} if study.val_from_train else {}),
            **({"duplicates": study.duplicates} if study.duplicates != "error" else {}),
        },
        **(
            {"objectives": [{"metric": m, "direction": d} for m, d in study.objectives]}
            if study.multi
            else {"objective": {"metric": study.metric, "direction": study.direction}}
        ),
        "epochs": study.epochs,
        "sampler": plain(study.sampler),
        "pruner": plain(study.pruner),
        "fixed": plain(study.fixed),
        "space": {
            k: dim_document(d)
            for k, d in study.space.items()
            if not (study.design and k == "seed") and not (study.cells and k == cells.CELL)
        },
    }
    if study.cells:
        doc["cells"] = plain(study.cells)
    if study.design is not None:
        doc["design"] = study.design.document()
    if study.max_params is not None:
        doc["constraints"] = {"max_params": study.max_params}
    if study.enqueue:
        doc["enqueue"] = plain(list(study.enqueue))
    doc["keep_weights"] = study.keep_weights
    return doc
