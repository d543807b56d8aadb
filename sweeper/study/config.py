"""The resolved config of one trial: every parameter a study may fix or search, with its unit and default.

A trial's config is ``defaults ∪ fixed ∪ --set ∪ sampled params``, frozen, and saved beside every result
(and with its Optuna trial) so a run can be reproduced from its record alone. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_MAX_PIXELS = 89_478_485
"""The default of ``data.max_pixels``: PIL's decompression-bomb limit (about 9459 x 9459)."""

Optimizer = Literal["sgd", "adam", "adamw", "radam", "ranger"]
Checkpoint = Literal["objective", "val_acc", "val_loss", "last", "both"]


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
    rotation_interpolation: Literal["bilinear", "nearest"] = "bilinear"  # smoother; nearest = torchvision's
    # RandomRotation default (what recipes 000, 001 and 002 ran)
    translate: bool = False
    translate_frac: float = 0.1  # max shift, fraction of width/height
    color_jitter: bool = False
    color_jitter_p: float = 1.0  # probability that an image is jittered at all (RandomApply)
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

    img_size: int | None = None  # eval resolution; None = the training img_size (or the model's)
    crop_pct: float | None = None  # crop ratio: resize to floor(size / crop_pct) first; None = the model's
    crop_mode: Literal["center", "squash", "border"] | None = None  # as timm; None = the model's (center)
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
    drop_last: bool = True  # drop a last partial training batch (a tiny batch adds noise to BatchNorm);
    # false = keep it, as torch's DataLoader does by default (what the recipes' authors ran)
    precision: Literal["bf16", "fp16"] = "bf16"  # autocast dtype on CUDA (bf16 needs no loss scaling);
    # fp16 = float16 with torch's GradScaler, the authors' AMP (recipe 004); on the CPU see loaders.autocast
    optimizer: Optimizer = "adamw"
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    lr_backbone: float = 1e-4  # at batch 256 when lr_scale_batch, else as is
    lr_head: float = 1e-3
    lr_scale_batch: bool = False  # scale both LRs by batch_size / 256 (linear scaling rule)
    lr_schedule: Literal["cosine", "constant", "onecycle"] = "cosine"  # onecycle: torch's, no warmup_epochs
    onecycle_pct_start: float = 0.3  # onecycle: fraction of the steps spent rising to the LRs
    onecycle_div_factor: float = 25.0  # onecycle: starting LR = LR / this
    onecycle_final_div_factor: float = 1e4  # onecycle: final LR = starting LR / this
    opt_eps: float | None = None  # Adam-family epsilon; None = the optimizer's default (1e-8)
    opt_betas: tuple[float, float] | None = None  # Adam-family betas; None = the default (0.9, 0.999)
    grad_clip: float | None = None  # clip the gradients' global L2 norm to this before each step; None = off
    grad_clip_tensors: tuple[str, ...] = ()  # glob patterns: clip each matching tensor's own gradient norm to
    # grad_clip instead (torch's clip_grad_norm_ on that tensor alone); () = the global norm
    layer_decay: float | None = None  # layer-wise LR decay factor per block, None = off
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # linear warmup, then cosine to zero
    freeze_depth: int = 0  # 0 = train all; k = freeze the stem and the first k stages
    freeze_stem: bool = False  # freeze the stem alone (the layers before the first stage)
    freeze: tuple[str, ...] = ()  # glob patterns of parameter names to freeze ("layer4.1.conv1.*")
    freeze_bn_stats: bool = True  # frozen BatchNorms keep their running statistics (eval mode); false = they
    # update as in model.train(), as for a tensor merely left out of the optimizer (recipes 000, 004)
    train_only: tuple[str, ...] = ()  # glob patterns: the optimizer holds these tensors alone, the others
    # stay as loaded; () = every tensor not frozen
    boost: tuple[str, ...] = ()  # glob patterns: own groups, sensitivity.lr / .weight_decay i for pattern i
    interpolation: Literal["model", "bilinear", "bicubic"] = "model"  # resize and crop, training and eval;
    # model = its pretrained config's (bicubic for most timm weights; torchvision's transforms: bilinear)
    normalize: bool = True  # subtract the model's mean and divide by its std; off = pixels in [0, 1]
    label_smoothing: float = 0.0
    supcon_weight: float = 0.0  # weight of the auxiliary supervised-contrastive loss; 0 = off
    supcon_temperature: float = 0.1  # softmax temperature of that loss
    cosine_weight: float = 0.0  # weight of the pairwise cosine-embedding loss (half same-class); 0 = off
    cosine_margin: float = 0.0  # that loss's margin for different-class pairs (torch's CosineEmbeddingLoss)
    cosine_partners: Literal["batch", "dataset"] = "batch"  # batch: a partner among the batch's images;
    # dataset: a second image per image drawn from the whole training set, augmented on its own (002)
    cosine_same_class: float = 0.5  # dataset partners: probability that a partner shares the image's class
    cosine_partner_ce: bool = False  # dataset partners: add the partners' cross entropy too (002's loss2)
    checkpoint: Checkpoint = "objective"  # the epoch whose weights a trial keeps; objective = study's metric
    # both: the objective's epoch, and also the other one of val_acc / val_loss as a second artifact
    patience: int | None = None  # stop after this many epochs without a better checkpoint; None = never
    folds: int = 1  # 1 = the given train/val split; k >= 2 = k-fold over train+val, objective = fold mean
    fold_holdout: bool = False  # k-fold over train only; val is a fixed hold-out scored per fold and ensemble
    merge_models: int = 1  # k >= 2: k copies from one init, seeds seed..seed+k-1, averaged every epoch
    ema_decay: float | None = None  # keep an exponential moving average of the weights; None = off
    head: Literal["linear", "dropout", "se", "attention"] = "linear"
    head_dropout: float = 0.0  # dropout before the classifier (any head; "dropout" = linear after dropout)
    seed: int = 0
    num_workers: int | None = None  # DataLoader workers; None = from the machine's cores
    channels_last: Literal["auto"] | bool = "auto"  # NHWC; auto = on CUDA, off for models it slows down
    compile: bool = False  # torch.compile the model: slower first epoch, faster steps after (GPU)
    cache_scale: float | None = None  # training cache short side = this x img_size, >= 1x; None: from crops
    # uint8 batches, float math (and a crop + flips pipeline's resize) on the device; auto = on CUDA
    device_aug: Literal["auto"] | bool = "auto"
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

DEFAULTS: dict[str, Any] = TrialConfig().flat()
"""Every parameter's default, by dotted name: what a trial gets where nothing sets it."""

GROUPS = tuple(sorted({k.split(".")[0] for k in PARAM_TYPES if "." in k}))
"""Nested parameter groups a study file may write as mappings (``aug: {cutmix: true}``)."""


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


def plain(v: object) -> Any:
    """Tuples as lists, recursively: the form a study file (YAML/JSON) writes them in."""
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v


FOLDS_KEEP_ONE = (
    "checkpoint: both keeps two epochs of one run, and a k-fold trial keeps one epoch per fold (its fold "
    "models make the ensemble): with folds, use checkpoint: val_acc, val_loss, objective or last"
)
