"""One fine-tuning run: build the model, train epoch by epoch, report, keep the best epoch's weights.

This module knows nothing of Optuna or MLflow. The caller passes ``report(epoch, metrics)``; a pruner
stops the run by raising from inside it, and the exception passes through untouched.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sweeper import augment, averaging, checkpoints, evaluation, loaders, losses, sensitivity
from sweeper import data as data_lib
from sweeper import model as model_lib
from sweeper.errors import SweeperError
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
    fold_states: list[dict[str, torch.Tensor]] = field(default_factory=list)  # k-fold: every fold's weights
    stopped_early: int = 0  # the epoch early stopping ended the run at; 0 = ran all epochs
    sensitive: list[tuple[str, float]] = field(default_factory=list)  # ranked tensors acted on, with scores


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to 0 or constant."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


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
    checkpoint: Path | None = None,
    stop_epoch: int | None = None,
) -> TrialResult:
    """Fine-tune ``cfg.backbone`` on ``data`` and return the kept epoch (``cfg.checkpoint``) and its metrics.

    With ``cfg.folds = k >= 2`` the model is trained k times, once per stratified fold of train+val; the
    result's metrics are the means over folds and every fold's weights are kept (for an ensemble). Fold
    ``f``'s epoch ``e`` is reported as step ``f * epochs + e``, so a pruner compares like with like.

    Args:
        report: called after every epoch with that epoch's metrics; may raise to stop the run.
        metric: the study's objective, ``val_acc`` (higher is better) or ``val_loss`` (lower is better).
        train_on_val: refit mode: train on train+val, no validation.
        checkpoint: an epoch checkpoint file, rewritten after every epoch; when it exists (the retry of a
            trial whose worker died) training resumes after its epoch (the restored epochs are not
            reported again). Single-model training only: k-fold, merging and EMA start over.
        stop_epoch: stop after this epoch, with the LR schedule still laid over ``cfg.epochs`` (a refit
            replays the trial's schedule up to the trial's best epoch); None = train all epochs.
    """
    device = device or loaders.pick_device()
    if train_on_val:
        return fit(
            cfg,
            data.train + data.val,
            None,
            data.classes,
            report,
            metric=metric,
            device=device,
            probe=data.val,
            stop_epoch=stop_epoch,
        )
    if cfg.folds == 1:
        return fit(
            cfg,
            data.train,
            data.val,
            data.classes,
            report,
            metric=metric,
            device=device,
            checkpoint=checkpoint,
        )
    results = []
    for f, (train_split, val_split) in enumerate(data_lib.kfold(data.train + data.val, cfg.folds, cfg.seed)):
        fold_report = None
        if report is not None:

            def fold_report(e: int, m: dict[str, float], f: int = f) -> None:
                report(f * cfg.epochs + e, {**m, "fold": f})

        results.append(
            fit(cfg, train_split, val_split, data.classes, fold_report, metric=metric, device=device)
        )
    return _combine_folds(results)


def _combine_folds(results: list[TrialResult]) -> TrialResult:
    """Fold means of the kept epochs' metrics, the summed (out-of-fold) confusion, every fold's weights."""
    keys = set.intersection(*(set(r.best) for r in results))
    best = {k: float(np.mean([r.best[k] for r in results])) for k in sorted(keys)}
    confusions = [r.confusion for r in results if r.confusion is not None]
    return TrialResult(
        history=[{**h, "fold": f} for f, r in enumerate(results) for h in r.history],
        best_epoch=max(1, round(float(np.mean([r.best_epoch for r in results])))),
        best=best,
        state_dict={},
        confusion=sum(confusions[1:], confusions[0]) if confusions else None,
        data_config=results[0].data_config,
        num_params=results[0].num_params,
        fold_states=[r.state_dict for r in results],
    )


def _train_epoch(
    model: nn.Module,
    optimizer,
    scheduler,
    batches,
    cfg: TrialConfig,
    mix,
    device: torch.device,
    on_step: Callable[[], None] | None = None,
) -> tuple[float, float, int]:
    """One pass over ``batches``; returns (summed loss, correct predictions, images seen)."""
    model_lib.train_mode(model)
    hard_loss = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
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
        for sl in _micro_slices(len(x), cfg.micro_batch):
            with loaders.autocast(device):
                if cfg.supcon_weight > 0:
                    feats, logits = model_lib.features_and_logits(model, x[sl])
                else:
                    logits = model(x[sl])
                loss = (
                    losses.soft_cross_entropy(logits, target[sl])
                    if target is not None
                    else hard_loss(logits.float(), y[sl])
                )
                if cfg.supcon_weight > 0:  # on the un-mixed labels: a mixed image counts as its first source
                    loss = loss + cfg.supcon_weight * losses.supcon(feats, y[sl], cfg.supcon_temperature)
            (loss * (logits.shape[0] / len(x))).backward()
            loss_sum += loss.detach() * logits.shape[0]
            correct += (logits.argmax(1) == y[sl]).sum()
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step()
        seen += len(x)
    return loss_sum.item(), float(correct.item()), seen


def fit(
    cfg: TrialConfig,
    train_split: data_lib.Split,
    val_split: data_lib.Split | None,
    classes: tuple[str, ...],
    report: Report | None = None,
    *,
    metric: str = "val_acc",
    device: torch.device | None = None,
    probe: data_lib.Split | None = None,
    checkpoint: Path | None = None,
    stop_epoch: int | None = None,
) -> TrialResult:
    """Train one model on ``train_split``, validating on ``val_split`` (None: refit, keep the last epoch).

    Args:
        probe: labelled images for the sensitive-layer analysis when there is no ``val_split``.
        checkpoint: the epoch checkpoint to resume from and rewrite (see :func:`run_trial`).
        stop_epoch: the last epoch to train; the LR schedule still spans ``cfg.epochs``.
    """
    device = device or loaders.pick_device()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = model_lib.create(cfg, len(classes))
    dcfg = model_lib.data_config(model, cfg.img_size)
    loaders.setup_model(model, cfg, device)
    pipes = loaders.Pipelines(cfg, dcfg, device, train_split, val_split, probe)
    val_dl = None
    if val_split is not None:
        val_dl = loaders.loader(pipes.eval(val_split), cfg, train=False, device=device, tail=pipes.eval_tail)
    own, sensitive = _sensitivity(model, cfg, pipes, val_split if val_split is not None else probe, device)
    run = _Run(cfg, model, pipes.train(train_split), pipes, device, own, len(classes))
    result = TrialResult(data_config=dcfg, num_params=model_lib.count_params(model), sensitive=sensitive)
    keep = metric if cfg.checkpoint == "objective" else cfg.checkpoint
    stopper = _EarlyStop(cfg.patience, metric if keep == "last" else keep)
    if len(run.trainers) > 1 or run.ema is not None or cfg.sensitivity.action != "none":
        checkpoint = None  # their state is more than one model and optimizer: these start over
    start = 1
    if checkpoint is not None:
        start = checkpoints.restore(checkpoint, cfg, model, *run.trainers[0][1:3], result)
        for metrics in result.history:  # early stopping's state, as it was
            stopper.update(metrics)
    last = cfg.epochs if stop_epoch is None else max(1, min(stop_epoch, cfg.epochs))
    for epoch in range(start, last + 1):
        metrics, cm = run.epoch(epoch, val_dl, metric)
        result.history.append(metrics)
        if (
            val_dl is None
            or keep == "last"
            or not result.best
            or stopper.better(metrics[keep], result.best[keep], keep)
        ):
            result.best, result.best_epoch, result.confusion = metrics, epoch, cm
            result.state_dict = {
                k: v.detach().to("cpu", copy=True) for k, v in run.evaluated.state_dict().items()
            }
        if checkpoint is not None:
            checkpoints.save(checkpoint, cfg, epoch, model, *run.trainers[0][1:3], result)
        if report is not None:
            report(epoch, metrics)
        if val_dl is not None and stopper.update(metrics):
            result.stopped_early = epoch
            break
    return result


def _sensitivity(
    model: nn.Module,
    cfg: TrialConfig,
    pipes: loaders.Pipelines,
    probe: data_lib.Split | None,
    device: torch.device,
) -> tuple[dict[str, dict[str, float]], list[tuple[str, float]]]:
    """Sensitive-layer analysis before training: freeze the top tensors, or give them their own groups."""
    sens = cfg.sensitivity
    if sens.action == "none":
        return {}, []
    if probe is None or not len(probe):
        raise SweeperError("sensitivity analysis needs labelled validation images; there are none")
    probe_dl = loaders.loader(pipes.eval(probe), cfg, train=False, device=device, tail=pipes.eval_tail)
    ranked = sensitivity.rank(model, probe_dl, device, sens.batches, model_lib.classifier_param_ids(model))
    top = [name for name, _ in ranked[: sens.top_k]]
    if sens.action == "freeze":
        sensitivity.freeze(model, top)
        return {}, ranked[: sens.top_k]
    return sensitivity.own_groups(top, sens), ranked[: sens.top_k]


class _EarlyStop:
    """Stop after ``patience`` epochs without a better ``watch`` value; None = never."""

    def __init__(self, patience: int | None, watch: str) -> None:
        self.patience, self.watch = patience, watch
        self.best: float | None = None
        self.since = 0

    @staticmethod
    def better(a: float, b: float, key: str) -> bool:
        return a > b if key == "val_acc" else a < b

    def update(self, metrics: dict[str, float]) -> bool:
        """Take one epoch's metrics; True when training should stop."""
        value = metrics.get(self.watch)
        if value is None:
            return False
        if self.best is None or self.better(value, self.best, self.watch):
            self.best, self.since = value, 0
            return False
        self.since += 1
        return self.patience is not None and self.since >= self.patience


class _Run:
    """The models being trained: one, or merged replicas sharing the initial weights (each its own
    optimizer, schedule and data order), and an EMA of the first when asked."""

    def __init__(
        self,
        cfg: TrialConfig,
        model: nn.Module,
        train_ds: Any,
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
            multiplier = lr_multiplier(
                cfg.lr_schedule, cfg.epochs * len(dl), int(cfg.warmup_epochs * len(dl))
            )
            self.trainers.append((m, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier), dl))
        self.mix = augment.mixer(cfg.aug, cfg.label_smoothing, num_classes)
        self.ema = averaging.ema(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.steps = 0

    @property
    def evaluated(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _ema_step(self) -> None:
        self.steps += 1
        assert self.ema is not None
        self.ema.update(self.model, step=self.steps)

    def epoch(self, epoch: int, val_dl: Any, metric: str) -> tuple[dict[str, float], np.ndarray | None]:
        """Train every replica one epoch, merge them, validate; the epoch's metrics and confusion."""
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0.0, 0
        for i, (m, optimizer, scheduler, dl) in enumerate(self.trainers):
            on_step = self._ema_step if self.ema is not None and i == 0 else None
            ls, c, n = _train_epoch(m, optimizer, scheduler, dl, self.cfg, self.mix, self.device, on_step)
            loss_sum, correct, seen = loss_sum + ls, correct + c, seen + n
        if len(self.trainers) > 1:
            averaging.merge([t[0] for t in self.trainers])
        train_loss = loss_sum / max(seen, 1)
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss is {train_loss} in epoch {epoch}; lower the learning rate")
        groups = self.trainers[0][1].param_groups
        lr = next((g["lr"] for g in groups if g.get("name") == "backbone"), groups[0]["lr"])
        metrics = {"train_loss": train_loss, "train_acc": correct / max(seen, 1), "lr_backbone": lr}
        cm = None
        if val_dl is not None:
            tta = self.cfg.eval.tta
            val_loss, val_acc, cm = evaluation.evaluate(
                self.evaluated, val_dl, self.num_classes, self.device, tta
            )
            metrics.update(val_loss=val_loss, val_acc=val_acc)
            if not math.isfinite(metrics[metric]):
                raise DivergedError(f"{metric} is {metrics[metric]} after epoch {epoch}; lower the LR")
        metrics["epoch_seconds"] = time.perf_counter() - t0
        return metrics, cm
