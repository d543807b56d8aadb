"""Models from timm's factory: pretrained loading, a new head, generic freezing, parameter groups.

Freezing works for any timm CNN from its ``feature_info``: the *stages* are the feature levels at
stride 4 and deeper, everything before the first one is the stem, so ``freeze_depth=k`` freezes the
stem and the first k stages whatever the architecture calls them (``layer1``, ``stages.0``, ``s1``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeper.errors import SweeperError, did_you_mean
from sweeper.servable.network import HeadedModel, timm_kwargs, with_head  # heads live with the served model
from sweeper.study.config import TrialConfig


@functools.cache
def _all_model_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def check_backbone(name: str) -> None:
    """Unknown model names fail before anything runs, with the closest timm names suggested."""
    import timm
    from timm.models import split_model_name_tag

    arch, _tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise SweeperError(
            f"unknown timm model {name!r}{did_you_mean(arch, _all_model_names())}; "
            "`python -c 'import timm; print(timm.list_models(\"resnet*\"))'` lists them"
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def cached_weights(backbone: str) -> str | None:
    """The model's pretrained weights file in the local Hugging Face hub cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(backbone)
    repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    if not repo:
        return None
    assert pcfg is not None
    names = [pcfg.hf_hub_filename] if pcfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now, not at huggingface_hub's import
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving both the pooled pre-logits features and the logits.

    An auxiliary loss on the features (supervised contrastive) needs them without a second pass.
    """
    if isinstance(model, HeadedModel):
        pooled = model.head.pool(model.backbone.forward_features(x))  # type: ignore[operator]  # nn.Module attributes type as Tensor | Module
        return pooled, model.head.fc(model.head.drop(pooled))
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)  # type: ignore[operator]
    return pooled, model.get_classifier()(pooled)  # type: ignore[operator]


def create(cfg: TrialConfig, num_classes: int) -> nn.Module:
    """Build the model a trial trains: timm backbone (pretrained when asked), new head, frozen stem.

    Pretrained weights come from ``cfg.weights_file`` when given, else from the Hugging Face hub cache
    (or a download where there is network). Asking for pretrained weights that cannot be had is an
    error, never a silent random init.
    """
    import timm

    check_backbone(cfg.backbone)
    kwargs: dict[str, Any] = {"pretrained": cfg.pretrained or cfg.weights_file is not None}
    weights = cfg.weights_file or (cached_weights(cfg.backbone) if cfg.pretrained else None)
    if cfg.weights_file is not None and not Path(cfg.weights_file).is_file():
        raise SweeperError(
            f"weights_file {cfg.weights_file} does not exist; fix the path or set pretrained: false"
        )
    if cfg.pretrained and weights is None and _offline():
        raise SweeperError(
            f"pretrained weights for {cfg.backbone!r} are not in the Hugging Face hub cache and "
            "HF_HUB_OFFLINE is set; download them once where there is network, set weights_file, "
            "or set pretrained: false"
        )
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": weights}
    kwargs.update(timm_kwargs(cfg.head, num_classes))  # timm's pooling and classifier, or a FeatureHead
    try:
        model = timm.create_model(cfg.backbone, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # hub offline / missing file / bad checkpoint
        if not kwargs["pretrained"]:
            raise
        where = cfg.weights_file or "the Hugging Face hub cache (~/.cache/huggingface)"
        raise SweeperError(
            f"pretrained weights for {cfg.backbone!r} could not be loaded from {where}: "
            f"{str(e).splitlines()[0][:200]}; put the weights there, set weights_file, "
            "or set pretrained: false"
        ) from None
    model = with_head(model, cfg.head, num_classes, cfg.head_dropout)
    if not isinstance(model, HeadedModel) and cfg.head_dropout > 0:  # timm's classifier: dropout before it
        model.get_classifier().register_forward_pre_hook(DropoutBefore(cfg.head_dropout))  # type: ignore[operator]  # nn.Module attributes type as Tensor | Module
    freeze_as_asked(model, cfg)
    return model


def freeze_as_asked(model: nn.Module, cfg: TrialConfig) -> None:
    """Every way a config leaves tensors untrained: depth, stem, named patterns, all but ``train_only``."""
    if cfg.freeze_depth:
        freeze(model, cfg.freeze_depth)
    if cfg.freeze_stem:
        freeze_stem(model)
    for name in matching(model, cfg.freeze, "freeze"):
        model.get_parameter(name).requires_grad_(False)
    if cfg.train_only:
        train_only(model, cfg.train_only)


def train_only(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Leave only the tensors matching ``patterns`` trainable (the optimizer holds them alone); return them.

    The others get no gradient rather than a gradient nobody applies: the same weights after every step
    as the author's optimizer over two tensors (recipe 000), without the backward pass through them.
    """
    keep = matching(model, patterns, "train_only")
    for name, p in model.named_parameters():
        if name not in keep:
            p.requires_grad_(False)
    return keep


class DropoutBefore:
    """A forward pre-hook: dropout on the classifier's input in training, as timm's ``drop_rate`` does.

    Kept out of the backbone so that ``forward_head(pre_logits=True)`` gives the features *before* the
    dropout: what an auxiliary loss on the features (SupCon, cosine embedding) should see.
    """

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (torch.nn.functional.dropout(args[0], self.p, module.training), *args[1:])


def matching(model: nn.Module, patterns: tuple[str, ...], key: str) -> list[str]:
    """Names of the parameters matching any glob pattern; a pattern matching none is an error."""
    from fnmatch import fnmatchcase

    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not any(fnmatchcase(n, pat) for n in names):
            raise SweeperError(f"{key}: pattern {pat!r} matches no parameter{did_you_mean(pat, names)}")
    return [n for n in names if any(fnmatchcase(n, pat) for pat in patterns)]


def freeze_stem(model: nn.Module) -> list[str]:
    """Freeze the parameters before the first stage (``conv1``, ``bn1`` in a ResNet); return their names."""
    first = stages(model)[0] + "."
    params = list(model.named_parameters())
    end = next(i for i, (n, _) in enumerate(params) if n.startswith(first))
    for _, p in params[:end]:
        p.requires_grad_(False)
    return [n for n, _ in params[:end]]


def count_params_for(cfg: TrialConfig, num_classes: int) -> int:
    """Parameters of the model ``cfg`` describes, counted without allocating or loading any weights.

    Built on PyTorch's meta device, so checking a 100M-parameter budget costs milliseconds, not a download.
    """
    import dataclasses

    with torch.device("meta"):
        bare = dataclasses.replace(cfg, pretrained=False, weights_file=None, freeze_depth=0)
        model = create(bare, num_classes)
    return count_params(model)


def data_config(model: nn.Module, img_size: int | None, interpolation: str = "model") -> dict[str, Any]:
    """Input size, mean/std, interpolation and crop_pct from the model's pretrained config.

    Args:
        interpolation: ``model`` keeps the config's; a name replaces it for every resize and crop of the
            run (training, eval, the cache, and the predictor, which reads this config back).
    """
    from timm.data import resolve_model_data_config

    cfg = dict(resolve_model_data_config(model))
    if img_size is not None:
        cfg["input_size"] = (3, img_size, img_size)
    if interpolation != "model":
        cfg["interpolation"] = interpolation
    return cfg


def stages(model: nn.Module) -> list[str]:
    """Module names of the model's stages (feature levels at stride >= 4), in order."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise SweeperError(f"{type(model).__name__} has no feature_info; freeze_depth needs a timm CNN")
    entries = info if isinstance(info, list) else info.info
    prefix = "backbone." if isinstance(model, HeadedModel) else ""
    return [prefix + e["module"] for e in entries if e["reduction"] >= 4]


def freeze(model: nn.Module, depth: int) -> list[str]:
    """Freeze the stem and the first ``depth`` stages; return the names of frozen parameters.

    Frozen normalization layers also stop updating their running statistics (see :func:`train_mode`).
    """
    names = stages(model)
    if not 0 <= depth <= len(names):
        raise SweeperError(
            f"freeze_depth={depth} but {type(model).__name__} has {len(names)} stages; use 0..{len(names)}"
        )
    if depth == 0:
        return []
    last_stage = names[depth - 1]
    params = list(model.named_parameters())
    last = max(i for i, (n, _) in enumerate(params) if n.startswith(last_stage + "."))
    frozen = [n for n, _ in params[: last + 1]]
    for _, p in params[: last + 1]:
        p.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module, freeze_bn_stats: bool = True) -> None:
    """``model.train()``, but normalization layers whose parameters are all frozen stay in eval mode.

    Args:
        freeze_bn_stats: False = plain ``model.train()``: frozen BatchNorms still update their running
            statistics, as they do for a tensor merely left out of the optimizer (recipe 004's stem).
    """
    model.train()
    if not freeze_bn_stats:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()


def classifier_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.get_classifier().parameters()}  # type: ignore[operator]  # nn.Module attributes type as Tensor | Module


def param_groups(
    model: nn.Module, cfg: TrialConfig, own: dict[str, dict[str, float]] | None = None
) -> list[dict[str, Any]]:
    """Optimizer groups: backbone and head with their own LRs; no weight decay on biases and norms.

    With ``layer_decay``, timm's layer-wise grouping scales each backbone block's LR down by depth.

    Args:
        own: parameter name -> ``{"lr": ..., "weight_decay": ...}`` for tensors that get a group of their
            own (boosted sensitive layers); a missing key keeps the value the tensor would have had.
    """
    scale = cfg.batch_size / 256 if cfg.lr_scale_batch else 1.0
    head_ids = classifier_param_ids(model)
    own = own or {}
    own_ids = {id(p): n for n, p in model.named_parameters() if n in own}
    if cfg.layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        headed = isinstance(model, HeadedModel)
        target = model.backbone if headed else model  # timm's grouping needs timm's group_matcher
        base = param_groups_layer_decay(
            target,  # type: ignore[arg-type]  # nn.Module attributes type as Tensor | Module
            weight_decay=cfg.weight_decay,
            layer_decay=cfg.layer_decay,
            no_weight_decay_list=_no_weight_decay(target),  # type: ignore[arg-type]
        )
        if headed:
            base.append(
                {"params": list(model.get_classifier().parameters()), "weight_decay": cfg.weight_decay}  # type: ignore[operator]  # nn.Module attributes type as Tensor | Module
            )
    else:  # timm's split: no decay on biases, norms and what the model names (ViT's pos_embed)
        from timm.optim import param_groups_weight_decay

        exempt = _no_weight_decay(model.backbone if isinstance(model, HeadedModel) else model)  # type: ignore[arg-type]
        prefix = "backbone." if isinstance(model, HeadedModel) else ""
        base = param_groups_weight_decay(
            model, cfg.weight_decay, no_weight_decay_list=[prefix + n for n in exempt]
        )
    groups: list[dict[str, Any]] = []
    for g in base:
        trainable = [p for p in g["params"] if p.requires_grad]
        for is_head in (False, True):
            lr = cfg.lr_head if is_head else cfg.lr_backbone * g.get("lr_scale", 1.0)
            ps = [p for p in trainable if (id(p) in head_ids) == is_head]
            for p in ps:
                if id(p) in own_ids:
                    name = own_ids[id(p)]
                    o = own[name]
                    groups.append(
                        {
                            "params": [p],
                            "lr": o.get("lr", lr) * scale,
                            "weight_decay": o.get("weight_decay", g["weight_decay"]),
                            "name": name,
                        }
                    )
            ps = [p for p in ps if id(p) not in own_ids]
            if ps:
                groups.append(
                    {
                        "params": ps,
                        "weight_decay": g["weight_decay"],
                        "lr": lr * scale,
                        "name": "head" if is_head else "backbone",
                    }
                )
    return groups


def _no_weight_decay(model: nn.Module) -> list[str]:
    """The parameter names the model exempts from weight decay (timm's ``no_weight_decay()``)."""
    nwd = getattr(model, "no_weight_decay", None)
    return sorted(nwd()) if callable(nwd) else []


def create_optimizer(model: nn.Module, cfg: TrialConfig, groups: list[dict[str, Any]] | None = None):
    """timm's optimizer factory over our parameter groups; 'ranger' is RAdam wrapped in Lookahead."""
    from timm.optim import create_optimizer_v2

    opt = {
        "sgd": "nesterov" if cfg.nesterov else "momentum",
        "adam": "adam",
        "adamw": "adamw",
        "radam": "radam",
        "ranger": "lookahead_radam",
    }[cfg.optimizer]
    extra: dict[str, Any] = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    if cfg.optimizer != "sgd":  # the Adam family
        extra.update({k: v for k, v in (("eps", cfg.opt_eps), ("betas", cfg.opt_betas)) if v is not None})
    return create_optimizer_v2(
        groups if groups is not None else param_groups(model, cfg),
        opt=opt,
        lr=cfg.lr_backbone,
        weight_decay=cfg.weight_decay,
        **extra,
    )


def clip_gradients(model: nn.Module, max_norm: float | None, per_tensor: tuple[str, ...]) -> None:
    """torch's ``clip_grad_norm_``: over every gradient at once, or on each tensor matching ``per_tensor``
    alone (recipe 000 clips ``layer4.1.conv1``'s gradient at 2.0 and leaves the rest as they are)."""
    if max_norm is None:
        return
    if not per_tensor:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return
    for name in matching(model, per_tensor, "grad_clip_tensors"):
        torch.nn.utils.clip_grad_norm_(model.get_parameter(name), max_norm)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
