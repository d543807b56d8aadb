"""The models one run trains and what it keeps: replicas, EMA, an epoch of steps, the kept epochs.

``Run`` holds the model (or merged replicas, each with its optimizer, schedule and data order) and an EMA
when asked, trains them one epoch at a time and saves/restores all of it for an epoch checkpoint.
``Kept`` picks the epochs whose weights a run keeps; ``EarlyStop`` ends a run that stopped improving.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sweeper import meter
from sweeper.data import augment, loaders
from sweeper.study.config import TrialConfig
from sweeper.train import averaging, evaluation, losses, schedules
from sweeper.train import model as model_lib

if TYPE_CHECKING:
    from sweeper.train.result import TrialResult


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def micro_slices(n: int, micro: int | None, multiple: int = 1) -> list[slice]:
    """Slices of a batch of ``n`` for gradient accumulation (one slice when micro is None or >= n), each
    a multiple of ``multiple`` rows (2 keeps an image and its partner together)."""
    step = n if micro is None or micro >= n else max(multiple, micro - micro % multiple)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def train_epoch(
    model: nn.Module,
    optimizer,
    scheduler,
    batches,
    cfg: TrialConfig,
    mix,
    device: torch.device,
    on_step: Callable[[], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress: meter.Meter | None = None,
) -> tuple[float, float, int]:
    """One pass over ``batches``; returns (summed loss, correct predictions, images seen).

    With a ``scaler`` (fp16) the loss is scaled before backward and the gradients unscaled before
    clipping, and a step whose gradients overflowed is skipped: torch's AMP recipe, step by step.
    """
    model_lib.train_mode(model, cfg.freeze_bn_stats)
    multiple = 2 if cfg.cosine_partners == "dataset" else 1
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        x, y = loaders.to_device(x, device), y.to(device, non_blocking=True)
        if mix is not None and len(x) % 2:  # timm's Mixup pairs images: needs an even batch
            x, y = x[:-1], y[:-1]
        target = None
        if mix is not None:
            x, target = mix(x, y)  # soft targets
        optimizer.zero_grad(set_to_none=True)
        for sl in micro_slices(len(x), cfg.micro_batch, multiple):
            with loaders.autocast(device, cfg.precision):
                loss, logits = step_loss(model, x[sl], y[sl], None if target is None else target[sl], cfg)
            part = loss * (logits.shape[0] / len(x))
            (part if scaler is None else scaler.scale(part)).backward()
            loss_sum += loss.detach() * logits.shape[0]
            correct += (logits.argmax(1) == y[sl]).sum()
        optimizer_step(model, optimizer, cfg, scaler)
        scheduler.step()
        if on_step is not None:
            on_step()
        seen += len(x)
        if progress is not None:  # the running loss is read only when a report goes out
            progress.step(images=len(x), loss=lambda: loss_sum.item() / max(seen, 1))  # noqa: B023
    return loss_sum.item(), float(correct.item()), seen


def optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrialConfig, scaler: torch.amp.GradScaler | None
) -> None:
    """Clip (globally or per tensor, on unscaled gradients) and step, through the fp16 scaler if any."""
    if scaler is not None and cfg.grad_clip is not None:
        scaler.unscale_(optimizer)
    model_lib.clip_gradients(model, cfg.grad_clip, cfg.grad_clip_tensors)
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()


def step_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, cfg: TrialConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch's loss and logits: cross entropy (on soft targets when mixed), plus the auxiliary
    feature losses on the pooled features before the head's dropout, with the un-mixed labels (a mixed
    image counts as its first source)."""
    if cfg.supcon_weight == 0 and cfg.cosine_weight == 0:
        feats, logits = None, model(x)
    else:
        feats, logits = model_lib.features_and_logits(model, x)
    if cfg.cosine_partners == "dataset":  # rows interleave images and their partners
        pairs = losses.Pairs(cfg.cosine_weight, cfg.cosine_margin, cfg.cosine_partner_ce, cfg.label_smoothing)
        return losses.partner_loss(feats, logits, y, pairs), logits
    if target is not None:
        loss = losses.soft_cross_entropy(logits, target)
    else:
        loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    if feats is not None and cfg.supcon_weight > 0:
        loss = loss + cfg.supcon_weight * losses.supcon(feats, y, cfg.supcon_temperature)
    if feats is not None and cfg.cosine_weight > 0:
        loss = loss + cfg.cosine_weight * losses.cosine_embedding(feats, y, cfg.cosine_margin)
    return loss, logits


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class Kept:
    """The epoch a run keeps (by ``watch``, or the last), and with ``checkpoint: both`` the best epoch by
    the other of val_acc / val_loss too, as a second set of weights (``result.also_kept``)."""

    OTHER = {"val_acc": "val_loss", "val_loss": "val_acc"}

    def __init__(self, cfg: TrialConfig, metric: str) -> None:
        self.watch = metric if cfg.checkpoint in ("objective", "both") else cfg.checkpoint
        self.other = self.OTHER[self.watch] if cfg.checkpoint == "both" else None

    @staticmethod
    def better(a: float, b: float, key: str) -> bool:
        return a > b if key == "val_acc" else a < b

    def update(
        self,
        result: TrialResult,
        epoch: int,
        metrics: dict[str, float],
        cm: np.ndarray | None,
        model: nn.Module,
    ) -> None:
        """Take one epoch: keep its weights where it is the best so far (always without validation)."""
        validated = "val_acc" in metrics
        if not validated or self.watch == "last" or not result.best:
            new_best = True
        else:
            new_best = self.better(metrics[self.watch], result.best[self.watch], self.watch)
        if new_best:
            result.best, result.best_epoch, result.confusion = metrics, epoch, cm
            result.state_dict = _cpu(model.state_dict())
        if self.other is not None and validated:
            prev = result.also_kept.get(self.other)
            if prev is None or self.better(metrics[self.other], prev[1][self.other], self.other):
                result.also_kept[self.other] = (epoch, metrics, _cpu(model.state_dict()))


class EarlyStop:
    """Stop after ``patience`` epochs without a better ``watch`` value; None = never."""

    def __init__(self, patience: int | None, watch: str) -> None:
        self.patience, self.watch = patience, watch
        self.best: float | None = None
        self.since = 0

    def update(self, metrics: dict[str, float]) -> bool:
        """Take one epoch's metrics; True when training should stop."""
        value = metrics.get(self.watch)
        if value is None:
            return False
        if self.best is None or Kept.better(value, self.best, self.watch):
            self.best, self.since = value, 0
            return False
        self.since += 1
        return self.patience is not None and self.since >= self.patience


class Run:
    """The models being trained: one, or merged replicas sharing the initial weights (each its own
    optimizer, schedule and data order), and an EMA of the first when asked."""

    def __init__(
        self,
        cfg: TrialConfig,
        model: nn.Module,
        train_ds: torch.utils.data.Dataset,
        pipes: loaders.Pipelines,
        device: torch.device,
        own: dict[str, dict[str, float]],
        num_classes: int,
    ) -> None:
        self.cfg, self.model, self.device, self.num_classes = cfg, model, device, num_classes
        replicas = [model] + [copy.deepcopy(model) for _ in range(cfg.merge_models - 1)]
        self.trainers = []
        for i, m in enumerate(replicas):
            dl = loaders.loader(
                train_ds, cfg, train=True, device=device, seed=cfg.seed + i, tail=pipes.train_tail
            )
            optimizer = model_lib.create_optimizer(m, cfg, model_lib.param_groups(m, cfg, own))
            self.trainers.append((m, optimizer, schedules.create(optimizer, cfg, len(dl)), dl))
        self.scalers = [loaders.grad_scaler(cfg.precision, device) for _ in self.trainers]
        self.mix = augment.mixer(cfg.aug, cfg.label_smoothing, num_classes)
        self.ema = averaging.ema(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.steps = 0

    @property
    def first_batch_at(self) -> float | None:
        """``perf_counter`` time the first training batch arrived (None before the first epoch)."""
        return self.trainers[0][3].first_batch_at

    @property
    def evaluated(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue after an epoch: every replica, optimizer and schedule, the EMA."""
        return {
            "models": [t[0].state_dict() for t in self.trainers],
            "optimizers": [t[1].state_dict() for t in self.trainers],
            "schedulers": [t[2].state_dict() for t in self.trainers],
            "ema": None if self.ema is None else self.ema.state_dict(),
            "steps": self.steps,
            "scalers": [None if sc is None else sc.state_dict() for sc in self.scalers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for (m, opt, sched, _), ms, os_, ss in zip(
            self.trainers, state["models"], state["optimizers"], state["schedulers"], strict=True
        ):
            m.load_state_dict(ms)
            opt.load_state_dict(os_)
            sched.load_state_dict(ss)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.steps = state["steps"]
        for sc, ss in zip(self.scalers, state.get("scalers") or [None] * len(self.scalers), strict=True):
            if sc is not None and ss is not None:
                sc.load_state_dict(ss)

    def _ema_step(self) -> None:
        self.steps += 1
        assert self.ema is not None
        self.ema.update(self.model, step=self.steps)

    def learning_rates(self) -> dict[str, float]:
        """The LR each group name trains at after this epoch (``lr/backbone``, ``lr/head``): metrics named
        apart from the configured ``lr_backbone``/``lr_head`` params, so MLflow's views keep them apart."""
        groups = self.trainers[0][1].param_groups
        out = {f"lr/{g['name']}": float(g["lr"]) for g in groups if g.get("name") in ("backbone", "head")}
        return out or {"lr/backbone": float(groups[0]["lr"])}

    def epoch(
        self, epoch: int, val_dl: loaders.DeviceLoader | None, metric: str
    ) -> tuple[dict[str, float], np.ndarray | None]:
        """Train every replica one epoch, score each, merge them, validate; the epoch's metrics, confusion."""
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0.0, 0
        train_s = waited = 0.0  # the train loops' wall time; of it, blocked on data
        replica_metrics: dict[str, float] = {}
        progress = meter.Meter("train", sum(len(t[3]) for t in self.trainers), epoch=epoch)
        for i, (m, optimizer, scheduler, dl) in enumerate(self.trainers):
            on_step = self._ema_step if self.ema is not None and i == 0 else None
            dl.waited, t, scaler = 0.0, time.perf_counter(), self.scalers[i]
            ls, c, n = train_epoch(  # ends in .item(): the device has finished the epoch's steps
                m, optimizer, scheduler, dl, self.cfg, self.mix, self.device, on_step, scaler, progress
            )
            train_s, waited = train_s + time.perf_counter() - t, waited + dl.waited
            loss_sum, correct, seen = loss_sum + ls, correct + c, seen + n
            if len(self.trainers) > 1 and val_dl is not None:  # each replica before the merge
                loss, acc, _ = evaluation.evaluate(
                    m, val_dl, self.num_classes, self.device, self.cfg.eval.tta
                )
                replica_metrics.update({f"val_loss_replica{i}": loss, f"val_acc_replica{i}": acc})
        if len(self.trainers) > 1:
            averaging.merge([t[0] for t in self.trainers])
        train_loss = loss_sum / max(seen, 1)
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss is {train_loss} in epoch {epoch}; lower the learning rate")
        metrics = {"train_loss": train_loss, "train_acc": correct / max(seen, 1), **self.learning_rates()}
        metrics.update(  # is the run data-bound? images/s through the train loops, share spent waiting
            train_images_per_s=seen / max(train_s, 1e-9), data_wait_share=waited / max(train_s, 1e-9)
        )
        cm = None
        if val_dl is not None:
            tta = self.cfg.eval.tta
            val_loss, val_acc, cm = evaluation.evaluate(
                self.evaluated, val_dl, self.num_classes, self.device, tta
            )
            metrics.update(val_loss=val_loss, val_acc=val_acc, **replica_metrics)
            if not math.isfinite(metrics[metric]):
                raise DivergedError(f"{metric} is {metrics[metric]} after epoch {epoch}; lower the LR")
        metrics["epoch_seconds"] = time.perf_counter() - t0
        return metrics, cm
