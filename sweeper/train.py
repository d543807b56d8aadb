"""One fine-tuning run: build the model, train epoch by epoch, report, keep the best epoch's weights.

This module knows nothing of Optuna or MLflow. The caller passes ``report(epoch, metrics)``; a pruner
stops the run by raising from inside it, and the exception passes through untouched.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper import augment
from sweeper import data as data_lib
from sweeper import model as model_lib
from sweeper.spec import TrialConfig

Report = Callable[[int, dict[str, float]], None]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrialResult:
    """What a finished run hands back: its history, best epoch and that epoch's weights and confusion."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0  # 1-based; 0 = no validation (refit)
    best: dict[str, float] = field(default_factory=dict)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    data_config: dict[str, Any] = field(default_factory=dict)
    num_params: int = 0


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_workers() -> int:
    """DataLoader workers from the machine's cores: leave one core for the training loop."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def loader(ds: torch.utils.data.Dataset, cfg: TrialConfig, train: bool, device: torch.device):
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=train,
        drop_last=train and len(ds) > cfg.batch_size,  # a tiny last batch adds noise to BatchNorm
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed) if train else None,
    )


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to 0."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@torch.no_grad()
def predict_logits(model: nn.Module, batches, device: torch.device, tta: bool = False):
    """Yield ``(probabilities, labels)`` per batch; with TTA, the mean of the image and its mirror."""
    model.eval()
    for x, y in batches:
        x = _to(x, device)
        with _autocast(device):
            p = model(x).float().softmax(1)
            if tta:
                p = 0.5 * (p + model(x.flip(3)).float().softmax(1))
        yield p, y.to(device)


def evaluate(model: nn.Module, batches, num_classes: int, device: torch.device, tta: bool = False):
    """Mean NLL and accuracy of the (TTA-averaged) probabilities, and the confusion matrix."""
    loss_sum, n = 0.0, 0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    for p, y in predict_logits(model, batches, device, tta):
        loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum").item()
        n += len(y)
        confusion += torch.bincount(y * num_classes + p.argmax(1), minlength=num_classes**2)
    cm = confusion.view(num_classes, num_classes).cpu().numpy()
    return loss_sum / max(n, 1), float(np.trace(cm) / max(n, 1)), cm


def _micro_slices(n: int, micro: int | None) -> list[slice]:
    """Slices of a batch of ``n`` for gradient accumulation (one slice when micro is None or >= n)."""
    step = n if micro is None or micro >= n else micro
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def run_trial(
    cfg: TrialConfig,
    data: data_lib.ImageFolderData,
    report: Report | None = None,
    *,
    metric: str = "val_acc",
    train_on_val: bool = False,
    device: torch.device | None = None,
) -> TrialResult:
    """Fine-tune ``cfg.backbone`` on ``data`` and return the best epoch by ``metric``.

    Args:
        report: called after every epoch with that epoch's metrics; may raise to stop the run.
        metric: ``val_acc`` (higher is better) or ``val_loss`` (lower is better) selects the best epoch.
        train_on_val: refit mode: train on train+val for ``cfg.epochs`` epochs, no validation.
    """
    device = device or pick_device()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    num_classes = len(data.classes)
    model = model_lib.create(cfg, num_classes)
    dcfg = model_lib.data_config(model, cfg.img_size)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True

    train_split = data.train + data.val if train_on_val else data.train
    train_ds = data_lib.ImageDataset(
        train_split.files, train_split.labels, augment.train_transform(cfg.aug, dcfg)
    )
    train_dl = loader(train_ds, cfg, train=True, device=device)
    val_dl = None
    if not train_on_val:
        val_ds = data_lib.ImageDataset(
            data.val.files, data.val.labels, augment.eval_transform(dcfg, cfg.eval.crop_pct)
        )
        val_dl = loader(val_ds, cfg, train=False, device=device)

    optimizer = model_lib.create_optimizer(model, cfg)
    steps_per_epoch = len(train_dl)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch))
    )
    mix = augment.mixer(cfg.aug, cfg.label_smoothing, num_classes)
    hard_loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    result = TrialResult(data_config=dcfg, num_params=model_lib.count_params(model))
    better = (lambda a, b: a > b) if metric == "val_acc" else (lambda a, b: a < b)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model_lib.train_mode(model)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in train_dl:
            x, y = _to(x, device), y.to(device, non_blocking=True)
            if mix is not None and len(x) % 2:  # timm's Mixup pairs images: needs an even batch
                x, y = x[:-1], y[:-1]
            target = None
            if mix is not None:
                x, target = mix(x, y)  # soft targets
            optimizer.zero_grad(set_to_none=True)
            for sl in _micro_slices(len(x), cfg.micro_batch):
                with _autocast(device):
                    logits = model(x[sl])
                    loss = (
                        torch.sum(-target[sl] * F.log_softmax(logits.float(), -1), -1).mean()
                        if target is not None
                        else hard_loss(logits.float(), y[sl])
                    )
                (loss * (logits.shape[0] / len(x))).backward()
                loss_sum += loss.detach() * logits.shape[0]
                correct += (logits.argmax(1) == y[sl]).sum()
            optimizer.step()
            scheduler.step()
            seen += len(x)
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss is {train_loss} in epoch {epoch}; lower the learning rate")
        metrics = {
            "train_loss": train_loss,
            "train_acc": correct.item() / max(seen, 1),
            "lr_backbone": optimizer.param_groups[0]["lr"],
        }
        if val_dl is not None:
            val_loss, val_acc, cm = evaluate(model, val_dl, num_classes, device, cfg.eval.tta)
            metrics.update(val_loss=val_loss, val_acc=val_acc)
        metrics["epoch_seconds"] = time.perf_counter() - t0
        result.history.append(metrics)
        if val_dl is None or not result.best or better(metrics[metric], result.best[metric]):
            result.best, result.best_epoch = metrics, epoch
            result.state_dict = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            result.confusion = cm if val_dl is not None else None
        if report is not None:
            report(epoch, metrics)
    return result


def load_for_inference(cfg: TrialConfig, num_classes: int, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a trained model from its config and weights (no pretrained weights needed)."""
    model = model_lib.create(
        dataclasses.replace(cfg, pretrained=False, weights_file=None, freeze_depth=0), num_classes
    )
    model.load_state_dict(state_dict)
    return model


def predict_files(
    model: nn.Module, files, cfg: TrialConfig, dcfg: dict[str, Any], device: torch.device | None = None
):
    """Class probabilities ``[N, C]`` for image files, with the eval transform (and TTA when on)."""
    device = device or pick_device()
    model.to(device)
    ds = data_lib.ImageDataset(tuple(files), None, augment.eval_transform(dcfg, cfg.eval.crop_pct))
    dl = loader(ds, cfg, train=False, device=device)
    return torch.cat([p.cpu() for p, _ in predict_logits(model, dl, device, cfg.eval.tta)])
