"""What a parameter value may be: its type and its range, checked with messages that name what is allowed.

Every numeric parameter has a range (:data:`LIMITS`) and some a rule beyond it (:data:`RULES`); a study
file, ``--set`` and a recorded config all pass through :func:`coerce`.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

from sweeper.errors import SweeperError, did_you_mean
from sweeper.study.config import PARAM_TYPES, TrialConfig, build_config

Fail = Callable[[str, str], SweeperError]
"""The study parser's error factory: ``fail(key path, message)`` -> the error to raise (it names the file)."""


def type_name(t: object) -> str:
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
    "onecycle_pct_start": Range(0, 1, low_open=True, high_open=True),  # torch's OneCycleLR
    "onecycle_div_factor": _POSITIVE,
    "onecycle_final_div_factor": _POSITIVE,
    "opt_eps": _POSITIVE,
    "opt_betas": Range(0, 1, high_open=True),
    "grad_clip": _POSITIVE,
    "freeze_depth": _NON_NEG,
    "label_smoothing": Range(0, 0.99),
    "supcon_weight": _NON_NEG,
    "supcon_temperature": _POSITIVE,
    "cosine_weight": _NON_NEG,
    "cosine_margin": Range(-1, 1),  # torch's CosineEmbeddingLoss: a cosine
    "cosine_same_class": _PROB,
    "patience": _ONE_UP,
    "folds": _ONE_UP,
    "merge_models": _ONE_UP,
    "ema_decay": Range(0, 1, high_open=True),
    "head_dropout": Range(0, 0.99),
    "seed": Range(0, 2**32 - 1),  # numpy's seeds are 32-bit
    "num_workers": _NON_NEG,
    "cache_scale": _NON_NEG,
    "aug.rrc_scale": _FRACTION,
    "aug.rrc_ratio": _POSITIVE,
    "aug.hflip_p": _PROB,
    "aug.vflip_p": _PROB,
    "aug.rotation_deg": Range(0, 180),
    "aug.translate_frac": _PROB,
    "aug.color_jitter_p": _PROB,
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
    "eval.img_size": Range(8),
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


def coerce(key: str, value: object) -> Any:
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


def _number(value: object) -> float | None:
    """A finite float from a number, or from a numeric-looking string (YAML 1.1 reads ``3e-3`` as one)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _coerce(t: object, value: object) -> tuple[bool, Any]:
    """Whether ``value`` is of the (typing) type ``t``, and the value as that type."""
    origin = typing.get_origin(t)
    if origin is Literal:
        return value in typing.get_args(t), value
    if origin in (Union, types.UnionType):
        for a in typing.get_args(t):
            ok, v = _coerce(a, value)
            if ok:
                return True, v
        return False, value
    if origin is tuple:
        return _coerce_tuple(typing.get_args(t), value)
    return _coerce_plain(t, value)


def _coerce_tuple(args: tuple[Any, ...], value: object) -> tuple[bool, Any]:
    if args[-1] is Ellipsis:  # tuple[float, ...]: a list, or one value
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        pairs = [_coerce(args[0], x) for x in items]
        allowed = bool(items) or args[0] is str  # an empty list of patterns: none
        return allowed and all(ok for ok, _ in pairs), tuple(v for _, v in pairs)
    if not isinstance(value, (list, tuple)) or len(value) != len(args):
        return False, value
    pairs = [_coerce(a, x) for a, x in zip(args, value, strict=True)]
    return all(ok for ok, _ in pairs), tuple(v for _, v in pairs)


def _coerce_plain(t: object, value: object) -> tuple[bool, Any]:
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


def combination(cfg: TrialConfig) -> None:
    """Settings that only mean something together; a resolved config that pairs them wrongly is refused.

    Raises:
        SweeperError: one line naming the key and what it needs.
    """
    pairs = cfg.cosine_partners == "dataset"
    problems = [
        (
            "grad_clip_tensors",
            bool(cfg.grad_clip_tensors) and cfg.grad_clip is None,
            "needs grad_clip (the norm)",
        ),
        ("cosine_partner_ce", cfg.cosine_partner_ce and not pairs, "needs cosine_partners: dataset"),
        (
            "cosine_partners",
            pairs and (cfg.aug.mixup or cfg.aug.cutmix),
            "dataset does not combine with aug.mixup / aug.cutmix (a mixed image has no one class)",
        ),
    ]
    for key, wrong, why in problems:
        if wrong:
            raise SweeperError(f"{key}: {why}")


def known_key(key: str, where: str) -> str:
    if key not in PARAM_TYPES:
        raise SweeperError(f"{where}: unknown parameter {key!r}{did_you_mean(key, PARAM_TYPES)}")
    return key


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
