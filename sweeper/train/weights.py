"""Pretrained weights a study needs: which backbones it can sample, whether their weights are here, and
fetching them ahead (on a machine with internet, for an offline cluster).

Weights live in the Hugging Face hub cache, where timm looks for them (``$HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``), or in a local ``weights_file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sweeper.errors import SweeperError
from sweeper.study.config import TrialConfig
from sweeper.study.spec import Study
from sweeper.train import model as model_lib


def candidates(spec: Study) -> list[TrialConfig]:
    """One config per backbone the study can sample (every choice of a searched backbone, in every cell)."""
    rows = [{"cell": c} for c in spec.cells] or [{}]
    backbones = (
        [{"backbone": b} for b in spec.space["backbone"].choices] if "backbone" in spec.space else [{}]
    )
    return [spec.resolve({**r, **b}) for r in rows for b in backbones]


def fetch(backbone: str) -> tuple[Path, bool]:
    """The backbone's pretrained weights file, downloaded into the hub cache when it is not there yet.

    Returns the path and whether it was downloaded now.

    Raises:
        SweeperError: no hub entry for the model, or the download failed (offline, unknown tag).
    """
    found = model_lib.cached_weights(backbone)
    if found is not None:
        return Path(found), False
    from huggingface_hub import hf_hub_download
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(backbone)
    repo = getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None
    if not repo:
        raise SweeperError(f"{backbone}: timm knows no pretrained weights for it; set pretrained: false")
    names = [pcfg.hf_hub_filename] if pcfg and pcfg.hf_hub_filename else ["model.safetensors"]
    if model_lib._offline():
        raise SweeperError(f"{backbone}: not downloaded, HF_HUB_OFFLINE is set")
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its own warning would repeat the one-line error below
    try:
        return Path(hf_hub_download(repo, names[0])), True
    except Exception as e:  # no network, no such file, hub refused
        why = str(e).splitlines()[0][:100]
        raise SweeperError(
            f"{backbone}: cannot download {repo}/{names[0]} ({type(e).__name__}: {why})"
        ) from None


@dataclass(frozen=True)
class Preflight:
    """What every trial of a study would trip over, found before the first one starts."""

    problems: list[str]  # each stops the sweep
    notes: list[str]  # worth saying, not fatal (a backbone over the parameter budget is recorded, not run)


def preflight(spec: Study, num_classes: int) -> Preflight:
    """Check every backbone the study can sample: a known timm name, weights at hand when pretrained,
    and the parameter budget. Nothing is downloaded (see :func:`fetch`)."""
    problems: list[str] = []
    notes: list[str] = []
    over = 0
    cfgs = candidates(spec)
    for cfg in cfgs:
        try:
            model_lib.check_backbone(cfg.backbone)
        except SweeperError as e:
            problems.append(str(e))
            continue
        missing = _missing_weights(cfg)
        if missing:
            problems.append(missing)
        if spec.max_params is not None:
            n = model_lib.count_params_for(cfg, num_classes)
            if n > spec.max_params:
                over += 1
                notes.append(
                    f"{cfg.backbone}: {n / 1e6:.1f}M parameters, over the budget: recorded, not trained"
                )
    if spec.max_params is not None and cfgs and over == len(cfgs):
        problems.append(
            f"every backbone the study can sample is over its budget of {spec.max_params:,} parameters"
        )
    return Preflight(problems, notes)


def ready(spec: Study, num_classes: int) -> list[str]:
    """Fail before any trial on what every trial would fail on: unknown models, missing pretrained
    weights (for every backbone the study can sample, all listed in one line), a budget no backbone
    meets, a damaged weights file. Returns the notes worth printing (backbones over the budget).

    Raises:
        SweeperError: the problems, in one line.
    """
    found = preflight(spec, num_classes)
    if found.problems:
        n = len(found.problems)
        raise SweeperError(f"{n} problem{'s' if n > 1 else ''} before any trial: {'; '.join(found.problems)}")
    if "backbone" not in spec.space:
        cfg = spec.resolve({})
        if cfg.pretrained or cfg.weights_file:
            model_lib.create(cfg, num_classes=2)  # loads the weights once: a damaged file fails here
    return found.notes


def _missing_weights(cfg: TrialConfig) -> str | None:
    if cfg.weights_file is not None:
        return None if Path(cfg.weights_file).is_file() else f"weights_file {cfg.weights_file} does not exist"
    if not cfg.pretrained or model_lib.cached_weights(cfg.backbone) is not None:
        return None
    if not model_lib._offline():
        return None  # the first trial downloads them, as timm does
    return (
        f"{cfg.backbone}: pretrained weights are not in the Hugging Face hub cache (HF_HUB_OFFLINE is set); "
        "run `sweeper fetch-weights STUDY` where there is internet, or set weights_file"
    )
