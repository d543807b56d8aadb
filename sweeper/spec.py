"""Study files: their schema, validation with clear errors, and the resolved per-trial config.

A study file declares *fixed* trial parameters and a *space* of searched ones. Every key in either
is a field of :class:`TrialConfig` (dotted for nested groups: ``aug.cutmix``, ``eval.tta``). A trial's
config is ``defaults ∪ fixed ∪ --set ∪ sampled params``, frozen, and saved beside every result so a
run can be reproduced from its artifacts alone.

This module imports nothing heavy: the CLI and every other module may import it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sweeper.errors import SweeperError, did_you_mean

DEFAULT_MAX_PIXELS = 89_478_485
"""The default of ``data.max_pixels``: PIL's decompression-bomb limit (about 9459 x 9459)."""

Optimizer = Literal["sgd", "adam", "adamw", "radam", "ranger"]
Checkpoint = Literal["objective", "val_acc", "val_loss", "last"]


@dataclass(frozen=True)
class AugConfig:
    """Training augmentations: each technique is an on/off toggle plus its magnitudes."""

    rrc: bool = True  # random resized crop; off = plain resize to the input size
    rrc_scale: tuple[float, float] = (0.08, 1.0)  # fraction of the image area kept
    rrc_ratio: tuple[float, float] = (0.75, 1.3333)  # aspect ratio range of the crop
    hflip: bool = True
    hflip_p: float = 0.5
    vflip: bool = False
    vflip_p: float = 0.5
    rotation: bool = False
    rotation_deg: float = 15.0  # uniform in [-deg, deg]
    translate: bool = False
    translate_frac: float = 0.1  # max shift, fraction of width/height
    color_jitter: bool = False
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.0
    grayscale: bool = False
    grayscale_p: float = 0.1
    blur: bool = False
    blur_p: float = 0.5
    blur_kernel: int = 3  # odd, pixels
    sharpness: bool = False
    sharpness_factor: float = 2.0
    sharpness_p: float = 0.5
    randaugment: bool = False
    randaugment_n: int = 2  # ops per image
    randaugment_m: int = 9  # magnitude, 0..30
    augmix: bool = False
    augmix_severity: int = 3
    erasing: bool = False
    erasing_p: float = 0.25
    mixup: bool = False
    mixup_alpha: float = 0.2
    cutmix: bool = False
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0  # probability that a batch is mixed at all when mixup/cutmix is on


@dataclass(frozen=True)
class EvalConfig:
    """How validation, test and refit predictions see an image."""

    crop_pct: float | None = None  # center-crop ratio; None = the model's pretrained crop_pct
    tta: bool = False  # average the probabilities of the image and its horizontal flip


@dataclass(frozen=True)
class SensitivityConfig:
    """Sensitive-layer analysis: rank tensors by their gradient on validation data, then act on the top-k.

    ``lr`` and ``weight_decay`` give the boosted tensors their own values, one per rank (the last value
    repeats for lower ranks); None keeps the backbone's.
    """

    action: Literal["none", "freeze", "boost"] = "none"
    top_k: int = 2  # tensors acted on, from the most sensitive down
    lr: tuple[float, ...] | None = None  # boost only; per rank, like the other LRs (scaled by batch if asked)
    weight_decay: tuple[float, ...] | None = None  # boost only; per rank
    batches: int = 8  # validation batches the gradients are summed over


@dataclass(frozen=True)
class TrialConfig:
    """Everything one fine-tuning run needs; the unit a study searches over."""

    backbone: str = "resnet18"  # any timm model name, optionally with a pretrained tag
    pretrained: bool = False
    weights_file: str | None = None  # local .safetensors/.pth for pretrained weights (no hub needed)
    img_size: int | None = None  # train/eval resolution; None = the model's pretrained input size
    epochs: int = 10  # fidelity budget: one report to the pruner per epoch
    batch_size: int = 64  # images per optimizer step (the effective batch)
    micro_batch: int | None = None  # images per forward pass; None = batch_size, smaller = grad accumulation
    optimizer: Optimizer = "adamw"
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    lr_backbone: float = 1e-4  # at batch 256 when lr_scale_batch, else as is
    lr_head: float = 1e-3
    lr_scale_batch: bool = False  # scale both LRs by batch_size / 256 (linear scaling rule)
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after the warmup
    layer_decay: float | None = None  # layer-wise LR decay factor per block, None = off
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # linear warmup, then cosine to zero
    freeze_depth: int = 0  # 0 = train all; k = freeze the stem and the first k stages
    label_smoothing: float = 0.0
    supcon_weight: float = 0.0  # weight of the auxiliary supervised-contrastive loss; 0 = off
    supcon_temperature: float = 0.1  # softmax temperature of that loss
    checkpoint: Checkpoint = "objective"  # the epoch whose weights a trial keeps; objective = study's metric
    patience: int | None = None  # stop after this many epochs without a better checkpoint; None = never
    folds: int = 1  # 1 = the given train/val split; k >= 2 = k-fold over train+val, objective = fold mean
    merge_models: int = 1  # k >= 2: k copies from one init, seeds seed..seed+k-1, averaged every epoch
    ema_decay: float | None = None  # keep an exponential moving average of the weights; None = off
    head: Literal["linear", "dropout", "se", "attention"] = "linear"
    head_dropout: float = 0.0  # dropout before the classifier (any head; "dropout" = linear after dropout)
    seed: int = 0
    num_workers: int | None = None  # DataLoader workers; None = from the machine's cores
    channels_last: Literal["auto"] | bool = "auto"  # NHWC; auto = on CUDA, off for models it slows down
    compile: bool = False  # torch.compile the model: slower first epoch, faster steps after (GPU)
    device_aug: Literal["auto"] | bool = "auto"  # uint8 batches, float math on the device; auto = on CUDA
    aug: AugConfig = field(default_factory=AugConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)

    def flat(self) -> dict[str, Any]:
        """All parameters as ``{dotted.key: value}``: the names logged to MLflow."""
        return _flatten(dataclasses.asdict(self))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.update(_field_types(t, f"{prefix}{f.name}."))  # type: ignore[arg-type]
        else:
            out[f"{prefix}{f.name}"] = t
    return out


PARAM_TYPES: dict[str, Any] = _field_types(TrialConfig)
"""Every parameter a study may fix or search, by dotted name, with its type."""

GROUPS = tuple(sorted({k.split(".")[0] for k in PARAM_TYPES if "." in k}))
"""Nested parameter groups a study file may write as mappings (``aug: {cutmix: true}``)."""


def type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(t))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(t))
    if origin is tuple and typing.get_args(t)[-1] is Ellipsis:
        return f"{type_name(typing.get_args(t)[0])} | [{type_name(typing.get_args(t)[0])}, ...]"
    if origin is tuple:
        return f"[{', '.join(type_name(a) for a in typing.get_args(t))}]"
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: ``low``..``high``, each end open or closed."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_ONE_UP = Range(1)  # counts: batch sizes, epochs, folds
_NON_NEG = Range(0)
_POSITIVE = Range(0, low_open=True)  # learning rates, temperatures
_PROB = Range(0, 1)  # probabilities
_FRACTION = Range(0, 1, low_open=True)  # crop_pct, layer_decay, rrc_scale

LIMITS: dict[str, Range] = {
    "img_size": Range(8),
    "epochs": _ONE_UP,
    "batch_size": _ONE_UP,
    "micro_batch": _ONE_UP,
    "momentum": Range(0, 1, high_open=True),
    "lr_backbone": _POSITIVE,
    "lr_head": _POSITIVE,
    "layer_decay": _FRACTION,
    "weight_decay": _NON_NEG,
    "warmup_epochs": _NON_NEG,
    "freeze_depth": _NON_NEG,
    "label_smoothing": Range(0, 0.99),
    "supcon_weight": _NON_NEG,
    "supcon_temperature": _POSITIVE,
    "patience": _ONE_UP,
    "folds": _ONE_UP,
    "merge_models": _ONE_UP,
    "ema_decay": Range(0, 1, high_open=True),
    "head_dropout": Range(0, 0.99),
    "seed": Range(0, 2**32 - 1),  # numpy's seeds are 32-bit
    "num_workers": _NON_NEG,
    "aug.rrc_scale": _FRACTION,
    "aug.rrc_ratio": _POSITIVE,
    "aug.hflip_p": _PROB,
    "aug.vflip_p": _PROB,
    "aug.rotation_deg": Range(0, 180),
    "aug.translate_frac": _PROB,
    "aug.brightness": _NON_NEG,
    "aug.contrast": _NON_NEG,
    "aug.saturation": _NON_NEG,
    "aug.hue": Range(0, 0.5),  # torchvision's ColorJitter
    "aug.grayscale_p": _PROB,
    "aug.blur_p": _PROB,
    "aug.blur_kernel": _ONE_UP,
    "aug.sharpness_factor": _NON_NEG,
    "aug.sharpness_p": _PROB,
    "aug.randaugment_n": _NON_NEG,
    "aug.randaugment_m": Range(0, 30),  # torchvision's 31 magnitude bins
    "aug.augmix_severity": Range(1, 10),  # torchvision's AugMix
    "aug.erasing_p": _PROB,
    "aug.mixup_alpha": _NON_NEG,
    "aug.cutmix_alpha": _NON_NEG,
    "aug.mix_prob": _PROB,
    "eval.crop_pct": _FRACTION,
    "sensitivity.top_k": _ONE_UP,
    "sensitivity.lr": _POSITIVE,
    "sensitivity.weight_decay": _NON_NEG,
    "sensitivity.batches": _ONE_UP,
}
"""The range of every numeric parameter (of each item, for pairs and per-rank lists)."""


def _odd(v: int) -> str | None:
    return None if v % 2 == 1 else f"must be odd, got {v}"


def _ordered(v: tuple[float, float]) -> str | None:
    return None if v[0] <= v[1] else f"needs low <= high, got [{_num(v[0])}, {_num(v[1])}]"


RULES: dict[str, Any] = {"aug.blur_kernel": _odd, "aug.rrc_scale": _ordered, "aug.rrc_ratio": _ordered}
"""Checks beyond a range: ``rule(value)`` returns what is wrong, or None."""


def coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the type, range and rule of parameter ``key``; return it in canonical form.

    Raises:
        ValueError: with a message naming what is allowed.
    """
    t = PARAM_TYPES[key]
    ok, v = _coerce(t, value)
    if not ok:
        raise ValueError(f"expected {type_name(t)}, got {value!r}")
    if v is None:
        return v
    rng = LIMITS.get(key)
    for x in v if isinstance(v, tuple) else (v,):
        if rng is not None and x not in rng:
            raise ValueError(f"must be {rng}, got {x!r}")
    problem = RULES[key](v) if key in RULES else None
    if problem:
        raise ValueError(problem)
    return v


def _number(value: Any) -> float | None:
    """A finite float from a number, or from a numeric-looking string (YAML 1.1 reads ``3e-3`` as one)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _coerce(t: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(t)
    if origin is Literal:
        return value in typing.get_args(t), value
    if origin in (Union, types.UnionType):
        for a in typing.get_args(t):
            ok, v = _coerce(a, value)
            if ok:
                return True, v
        return False, value
    if origin is tuple and typing.get_args(t)[-1] is Ellipsis:  # tuple[float, ...]: a list, or one value
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        pairs = [_coerce(typing.get_args(t)[0], x) for x in items]
        return bool(items) and all(ok for ok, _ in pairs), tuple(v for _, v in pairs)
    if origin is tuple:
        args = typing.get_args(t)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, value
        pairs = [_coerce(a, x) for a, x in zip(args, value, strict=True)]
        return all(ok for ok, _ in pairs), tuple(v for _, v in pairs)
    if t is type(None):
        return value is None, None
    if t is bool:
        return isinstance(value, bool), value
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if t is float:
        x = _number(value)
        return x is not None, value if x is None else x
    if t is str:
        return isinstance(value, str), value
    return False, value


# ---- the search space -------------------------------------------------------------------------


@dataclass(frozen=True)
class Dim:
    """One searched dimension. ``kind`` picks the Optuna suggest call."""

    kind: Literal["float", "int", "choice", "bool"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

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


def _parse_dim(key: str, raw: Any) -> Dim:
    """Parse ``{float: [lo, hi], log: true}``, ``{int: [lo, hi]}``, ``{choice: [...]}``, ``{bool: true}``."""
    if not isinstance(raw, dict):
        raise ValueError(
            "a dimension is a mapping such as {float: [1e-4, 1e-2], log: true}, {int: [0, 3]}, "
            f"{{choice: [a, b]}} or {{bool: true}}; got {raw!r}"
        )
    kinds = [k for k in ("float", "int", "choice", "bool") if k in raw]
    extra = set(raw) - {"float", "int", "choice", "bool", "log", "step"}
    if extra:
        bad = sorted(extra)[0]
        raise ValueError(f"unknown dimension option {bad!r}{did_you_mean(bad, ['log', 'step'])}")
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
    _check_values(key, [int(b) if kind == "int" else float(b) for b in (low, high)])
    if kind == "int" and key in RULES:  # "odd" must hold for every value sampled, not only the ends
        _check_values(key, list(range(low, high + 1, 1 if log or step is None else int(step))))
    return Dim(kind, low=low, high=high, log=log, step=step)  # type: ignore[arg-type]


def _check_values(key: str, values: list[Any]) -> list[Any]:
    out = []
    for v in values:
        try:
            out.append(coerce(key, v))
        except ValueError as e:
            raise ValueError(f"value {v!r} does not fit this parameter: {e}") from None
    return out


# ---- the study file ---------------------------------------------------------------------------

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "wilcoxon", "none")
METRICS = ("val_acc", "val_loss")
TOP_KEYS = (
    "name",
    "description",
    "data",
    "objective",
    "epochs",
    "sampler",
    "pruner",
    "constraints",
    "fixed",
    "space",
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
}
"""Numeric arguments of Optuna's samplers and pruners, checked when a study loads (others pass through)."""
DATA_KEYS = ("root", "max_pixels")


@dataclass(frozen=True)
class Study:
    """A validated study file. ``fixed`` and ``space`` are keyed by dotted parameter names."""

    name: str
    path: Path
    data_root: str
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    direction: Literal["maximize", "minimize"] = "maximize"
    epochs: int = 10
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    fixed: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Dim] = field(default_factory=dict)
    description: str = ""
    max_params: int | None = None  # parameter budget: a config over it is recorded, never trained
    max_pixels: int = DEFAULT_MAX_PIXELS  # data.max_pixels: the largest image (width x height) accepted

    def with_overrides(
        self, sets: dict[str, Any] | None = None, epochs: int | None = None, data_root: str | None = None
    ) -> Study:
        """Apply CLI overrides: ``--set`` pins a dimension or replaces a fixed value, ``--epochs`` caps."""
        fixed, space = dict(self.fixed), dict(self.space)
        for key, value in (sets or {}).items():
            key = known_key(key, f"--set {key}")
            try:
                fixed[key] = coerce(key, value)
            except ValueError as e:
                raise SweeperError(f"--set {key}={value!r}: {e}") from None
            space.pop(key, None)
        total = self.epochs if epochs is None else min(self.epochs, epochs)
        if epochs is not None and epochs < 1:
            raise SweeperError(f"--epochs must be at least 1, got {epochs}")
        return dataclasses.replace(
            self, fixed=fixed, space=space, epochs=total, data_root=data_root or self.data_root
        )

    def resolve(self, params: dict[str, Any]) -> TrialConfig:
        """The frozen config of one trial: defaults, then fixed values, then sampled params."""
        values = {"epochs": self.epochs, **self.fixed, **{k: coerce(k, v) for k, v in params.items()}}
        values["epochs"] = min(int(values["epochs"]), self.epochs)
        return build_config(values)


def build_config(values: dict[str, Any]) -> TrialConfig:
    """Turn ``{dotted.key: value}`` into a :class:`TrialConfig` (values already checked)."""
    nested: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, v in values.items():
        if "." in key:
            group, name = key.split(".", 1)
            nested.setdefault(group, {})[name] = v
        else:
            top[key] = v
    hints = typing.get_type_hints(TrialConfig)
    for group, kv in nested.items():
        top[group] = hints[group](**kv)
    return TrialConfig(**top)


def known_key(key: str, where: str) -> str:
    if key not in PARAM_TYPES:
        raise SweeperError(f"{where}: unknown parameter {key!r}{did_you_mean(key, PARAM_TYPES)}")
    return key


def _flatten_fixed(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in GROUPS:
            out.update(_flatten_fixed(v, f"{key}."))
        else:
            out[key] = v
    return out


def studies_dir() -> Path:
    """Where study names are looked up: ``$SWEEPER_STUDIES_DIR``, ``./studies``, else the shipped ones."""
    if os.environ.get("SWEEPER_STUDIES_DIR"):
        return Path(os.environ["SWEEPER_STUDIES_DIR"])
    local = Path.cwd() / "studies"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parent.parent / "studies"


def available_studies() -> list[Path]:
    return sorted(studies_dir().glob("*.yaml"))


def find(name_or_path: str) -> Path:
    """Resolve a study name (``studies/NAME.yaml``) or a path to a study file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SweeperError(f"study file {p} does not exist")
        return p
    candidate = studies_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = [s.stem for s in available_studies()]
    raise SweeperError(
        f"unknown study {name_or_path!r}{did_you_mean(name_or_path, names)}; "
        f"available in {studies_dir()}: {', '.join(names) or 'none'}"
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


def load(name_or_path: str) -> Study:
    """Load and validate a study file; every problem is a SweeperError naming file and key path."""
    path = find(name_or_path)
    try:
        raw = yaml.load(path.read_text(), Loader=StudyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SweeperError(f"{path}:{where}: not valid YAML: {problem}") from None
    return parse(raw, path)


def parse(raw: Any, path: Path) -> Study:
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

    root, max_pixels = _parse_data(raw.get("data"), path, fail)

    objective = raw.get("objective", {}) or {}
    if not isinstance(objective, dict):
        raise fail(
            "objective", f"must be a mapping {{metric: val_acc, direction: maximize}}, got {objective!r}"
        )
    for k in objective:
        if k not in ("metric", "direction"):
            raise fail(f"objective.{k}", f"unknown key{did_you_mean(str(k), ['metric', 'direction'])}")
    metric = objective.get("metric", "val_acc")
    if metric not in METRICS:
        raise fail("objective.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    direction = objective.get("direction", "maximize" if metric == "val_acc" else "minimize")
    if direction not in ("maximize", "minimize"):
        raise fail("objective.direction", f"must be maximize or minimize, got {direction!r}")

    epochs = raw.get("epochs", 10)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs not in _ONE_UP:
        raise fail("epochs", f"must be an integer {_ONE_UP}, got {epochs!r}")

    sampler = _named_section(raw.get("sampler", "tpe"), "sampler", SAMPLERS, fail)
    pruner = _named_section(raw.get("pruner", "median"), "pruner", PRUNERS, fail)

    constraints = raw.get("constraints", {}) or {}
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

    fixed_raw = raw.get("fixed", {}) or {}
    if not isinstance(fixed_raw, dict):
        raise fail("fixed", f"must be a mapping of parameter: value, got {fixed_raw!r}")
    fixed: dict[str, Any] = {}
    for key, value in _flatten_fixed(fixed_raw).items():
        if key not in PARAM_TYPES:
            raise fail(f"fixed.{key}", f"unknown parameter{did_you_mean(key, PARAM_TYPES)}")
        try:
            fixed[key] = coerce(key, value)
        except ValueError as e:
            raise fail(f"fixed.{key}", str(e)) from None

    space_raw = raw.get("space", {}) or {}
    if not isinstance(space_raw, dict):
        raise fail("space", f"must be a mapping of parameter: dimension, got {space_raw!r}")
    space: dict[str, Dim] = {}
    for key, dim in space_raw.items():
        key = str(key)
        if key not in PARAM_TYPES:
            raise fail(f"space.{key}", f"unknown parameter{did_you_mean(key, PARAM_TYPES)}")
        if key in fixed:
            raise fail(f"space.{key}", "is also in fixed; a parameter is either fixed or searched")
        try:
            space[key] = _parse_dim(key, dim)
        except ValueError as e:
            raise fail(f"space.{key}", str(e)) from None

    if sampler["name"] == "grid":
        for key, dim in space.items():
            try:
                dim.grid()
            except ValueError as e:
                raise fail(f"space.{key}", f"sampler grid: {e}") from None

    return Study(
        name=name,
        path=path,
        data_root=root,
        metric=metric,
        direction=direction,
        epochs=epochs,
        sampler=sampler,
        pruner=pruner,
        fixed=fixed,
        space=space,
        description=str(raw.get("description", "")),
        max_params=int(max_params) if max_params is not None else None,
        max_pixels=max_pixels,
    )


def _parse_data(data: Any, path: Path, fail: Any) -> tuple[str, int]:
    """``data: PATH`` or ``{root: PATH, max_pixels: N}``; a relative root is relative to the study file."""
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
    root = data["root"]
    if not root.startswith("builtin:") and not Path(root).is_absolute():
        root = str((path.parent / root).resolve()) if (path.parent / root).exists() else root
    return root, int(n)


def _named_section(raw: Any, key: str, names: tuple[str, ...], fail: Any) -> dict[str, Any]:
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


def _check_arg(key: str, value: Any, kind: type, rng: Range, alt: str | None, fail: Any) -> None:
    """One numeric sampler or pruner argument: its type, its range, or its one word (``auto``)."""
    if value is None and key.endswith(".seed") or (alt is not None and value == alt):
        return
    ok = isinstance(value, int) if kind is int else _number(value) is not None
    if isinstance(value, (bool, str)) or not ok or float(value) not in rng:
        what = f"an integer {rng}" if kind is int else f"a number {rng}"
        raise fail(key, f"must be {what}{f' or {alt!r}' if alt else ''}, got {value!r}")


def _plain(v: Any) -> Any:
    """Tuples as lists, recursively: the form a study file (YAML/JSON) writes them in."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def dim_document(d: Dim) -> dict[str, Any]:
    """A dimension in study-file syntax: the inverse of :func:`_parse_dim`."""
    if d.kind == "bool":
        return {"bool": True}
    if d.kind == "choice":
        return {"choice": _plain(d.choices)}
    out: dict[str, Any] = {d.kind: [d.low, d.high]}
    if d.log:
        out["log"] = True
    if d.step is not None:
        out["step"] = d.step
    return out


def to_document(study: Study) -> dict[str, Any]:
    """A study, overrides applied, in study-file syntax: ``parse(to_document(s), path)`` gives ``s`` back.

    This is what a study's record keeps, so the exact study a sweep ran can be rebuilt from storage.
    """
    doc: dict[str, Any] = {
        "name": study.name,
        "description": study.description,
        "data": {"root": study.data_root, "max_pixels": study.max_pixels},
        "objective": {"metric": study.metric, "direction": study.direction},
        "epochs": study.epochs,
        "sampler": _plain(study.sampler),
        "pruner": _plain(study.pruner),
        "fixed": _plain(study.fixed),
        "space": {k: dim_document(d) for k, d in study.space.items()},
    }
    if study.max_params is not None:
        doc["constraints"] = {"max_params": study.max_params}
    return doc


def config_from_flat(values: dict[str, Any]) -> TrialConfig:
    """A :class:`TrialConfig` from its ``flat()`` form as stored (JSON/YAML lists instead of tuples)."""
    unknown = [k for k in values if k not in PARAM_TYPES]
    if unknown:
        raise SweeperError(
            f"a recorded trial config has parameters this sweeper does not know: {', '.join(unknown)}; "
            "refit it with the sweeper version that ran it"
        )
    checked: dict[str, Any] = {}
    for k, v in values.items():
        try:
            checked[k] = coerce(k, v)
        except ValueError as e:
            raise SweeperError(f"a recorded trial config has {k}={v!r}: {e}") from None
    return build_config(checked)
