"""One fine-tuning run: build the model, train epoch by epoch, report, keep the best epoch's weights.

This module knows nothing of Optuna or MLflow. The caller passes ``report(epoch, metrics)``; a pruner
stops the run by raising from inside it, and the exception passes through untouched.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper import augment, averaging, losses, sensitivity
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


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cores() -> int:
    """CPU cores this process may run on (a container's or taskset's share, not the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers from the machine's cores: leave one core for the training loop."""
    return max(0, min(8, cores() - 1))


def workers(cfg: TrialConfig) -> int:
    return cfg.num_workers if cfg.num_workers is not None else default_workers()


SLOW_CHANNELS_LAST = ("resnest",)
"""Model families whose CUDA steps get slower in channels_last (ResNeSt's split attention reshapes
its activations, forcing layout copies); ``channels_last: auto`` leaves them in NCHW."""


def use_channels_last(cfg: TrialConfig, device: torch.device) -> bool:
    """``true``/``false`` as asked; ``auto`` = on CUDA (tensor cores want NHWC) unless known to slow down."""
    if cfg.channels_last != "auto":
        return bool(cfg.channels_last)
    return device.type == "cuda" and not cfg.backbone.startswith(SLOW_CHANNELS_LAST)


def setup_model(model: nn.Module, cfg: TrialConfig, device: torch.device) -> nn.Module:
    """Move the model to ``device`` in the chosen memory format, set the CUDA fast paths, compile if asked."""
    model.to(device)
    if use_channels_last(cfg, device):
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32
    if cfg.compile:
        model.compile()  # in place: state_dict keys stay those of the plain model
    return model


class DeviceLoader:
    """A DataLoader whose batches arrive on the device: pinned non-blocking copies, the chosen memory
    format, and the device part of the transform (``device_aug``) already applied."""

    def __init__(
        self,
        dl: torch.utils.data.DataLoader,
        device: torch.device,
        channels_last: bool,
        tail: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.dl, self.device, self.channels_last, self.tail = dl, device, channels_last, tail
        self.dataset = dl.dataset

    def __len__(self) -> int:
        return len(self.dl)

    def __iter__(self):
        for x, y in self.dl:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.tail is not None:
                x = self.tail(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def loader(
    ds: torch.utils.data.Dataset,
    cfg: TrialConfig,
    train: bool,
    device: torch.device,
    seed: int | None = None,
    tail: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DeviceLoader:
    """Batches of ``ds`` on ``device``; a training loader shuffles with its own generator (``seed``,
    default cfg.seed). ``tail`` is the device part of a transform split by ``augment.split_for_device``."""
    n = workers(cfg)
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=train,
        drop_last=train and len(ds) > cfg.batch_size,  # a tiny last batch adds noise to BatchNorm
        num_workers=n,
        persistent_workers=n > 0,
        prefetch_factor=max(2, 8 // n) if n else None,  # ~8 batches in flight whatever the worker count
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed if seed is None else seed) if train else None,
    )
    return DeviceLoader(dl, device, use_channels_last(cfg, device), tail)


class Pipelines:
    """The per-image transforms of a run, their device tails, and the decoded-image cache they read.

    The cache holds every file the run reads (sorted, so the folds of a k-fold trial and a refit on
    train+val share the trials' cache); the first run at this size builds it.
    """

    def __init__(
        self, cfg: TrialConfig, dcfg: dict[str, Any], device: torch.device, *splits: data_lib.Split | None
    ):
        from sweeper import cache

        self.train_tf: Any = augment.train_transform(cfg.aug, dcfg)
        self.eval_tf: Any = augment.eval_transform(dcfg, cfg.eval.crop_pct)
        files = sorted({f for s in splits if s is not None for f in s.files})
        self.images = cache.open_cache(files, self.eval_tf.transforms[0], workers=workers(cfg))
        self.train_tail = self.eval_tail = None
        if cfg.device_aug is True or (cfg.device_aug == "auto" and device.type == "cuda"):
            self.train_tf, self.train_tail = augment.split_for_device(self.train_tf)
            self.eval_tf, self.eval_tail = augment.split_for_device(self.eval_tf)

    def train(self, split: data_lib.Split) -> data_lib.ImageDataset:
        return data_lib.ImageDataset(split.files, split.labels, self.train_tf, self.images)

    def eval(self, split: data_lib.Split) -> data_lib.ImageDataset:
        return data_lib.ImageDataset(split.files, split.labels, self.eval_tf, self.images)


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


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True)  # a no-op for DeviceLoader batches, already there


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
    loss_sum, n = torch.zeros((), device=device), 0  # summed on the device: no sync per batch
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    for p, y in predict_logits(model, batches, device, tta):
        loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum")
        n += len(y)
        confusion += torch.bincount(y * num_classes + p.argmax(1), minlength=num_classes**2)
    cm = confusion.view(num_classes, num_classes).cpu().numpy()
    return loss_sum.item() / max(n, 1), float(np.trace(cm) / max(n, 1)), cm


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
    device = device or pick_device()
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
        x, y = _to(x, device), y.to(device, non_blocking=True)
        if mix is not None and len(x) % 2:  # timm's Mixup pairs images: needs an even batch
            x, y = x[:-1], y[:-1]
        target = None
        if mix is not None:
            x, target = mix(x, y)  # soft targets
        optimizer.zero_grad(set_to_none=True)
        for sl in _micro_slices(len(x), cfg.micro_batch):
            with _autocast(device):
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
    device = device or pick_device()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    num_classes = len(classes)
    model = model_lib.create(cfg, num_classes)
    dcfg = model_lib.data_config(model, cfg.img_size)
    setup_model(model, cfg, device)

    pipes = Pipelines(cfg, dcfg, device, train_split, val_split, probe)
    train_ds = pipes.train(train_split)
    val_dl = None
    if val_split is not None:
        val_dl = loader(pipes.eval(val_split), cfg, train=False, device=device, tail=pipes.eval_tail)

    own: dict[str, dict[str, float]] = {}
    sensitive: list[tuple[str, float]] = []
    sens = cfg.sensitivity
    if sens.action != "none":
        probe_split = val_split if val_split is not None else probe
        if probe_split is None or not len(probe_split):
            raise SweeperError("sensitivity analysis needs labelled validation images; there are none")
        probe_dl = loader(pipes.eval(probe_split), cfg, train=False, device=device, tail=pipes.eval_tail)
        head = model_lib.classifier_param_ids(model)
        ranked = sensitivity.rank(model, probe_dl, device, sens.batches, head)
        top = [name for name, _ in ranked[: sens.top_k]]
        sensitive = ranked[: sens.top_k]
        if sens.action == "freeze":
            sensitivity.freeze(model, top)
        else:
            own = sensitivity.own_groups(top, sens)

    # Periodic merging: replicas share the initial weights and differ in seed (data order, augmentation).
    replicas = [model] + [copy.deepcopy(model) for _ in range(cfg.merge_models - 1)]
    trainers = []
    for i, m in enumerate(replicas):
        dl = loader(train_ds, cfg, train=True, device=device, seed=cfg.seed + i, tail=pipes.train_tail)
        optimizer = model_lib.create_optimizer(m, cfg, model_lib.param_groups(m, cfg, own))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(cfg.lr_schedule, cfg.epochs * len(dl), int(cfg.warmup_epochs * len(dl)))
        )
        trainers.append((m, optimizer, scheduler, dl))
    mix = augment.mixer(cfg.aug, cfg.label_smoothing, num_classes)
    ema = averaging.ema(model, cfg.ema_decay) if cfg.ema_decay is not None else None
    steps = [0]

    def ema_step() -> None:
        steps[0] += 1
        assert ema is not None
        ema.update(model, step=steps[0])

    result = TrialResult(data_config=dcfg, num_params=model_lib.count_params(model), sensitive=sensitive)
    keep = metric if cfg.checkpoint == "objective" else cfg.checkpoint
    watch = metric if keep == "last" else keep  # what early stopping watches
    better = (lambda a, b: a > b) if watch == "val_acc" else (lambda a, b: a < b)
    best_watched, since_best = None, 0
    if len(replicas) > 1 or ema is not None or sens.action != "none":
        checkpoint = None  # their state is more than one model and optimizer: these start over
    start = 1
    if checkpoint is not None:
        start = _restore(checkpoint, cfg, model, trainers[0][1], trainers[0][2], result)
        for metrics in result.history:  # early stopping's state, as it was
            if best_watched is None or better(metrics[watch], best_watched):
                best_watched, since_best = metrics[watch], 0
            else:
                since_best += 1
    last = cfg.epochs if stop_epoch is None else max(1, min(stop_epoch, cfg.epochs))
    for epoch in range(start, last + 1):
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0.0, 0
        for i, (m, optimizer, scheduler, dl) in enumerate(trainers):
            ls, c, n = _train_epoch(
                m,
                optimizer,
                scheduler,
                dl,
                cfg,
                mix,
                device,
                on_step=ema_step if ema is not None and i == 0 else None,
            )
            loss_sum, correct, seen = loss_sum + ls, correct + c, seen + n
        if len(replicas) > 1:
            averaging.merge(replicas)
        train_loss = loss_sum / max(seen, 1)
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss is {train_loss} in epoch {epoch}; lower the learning rate")
        optimizer = trainers[0][1]
        metrics = {
            "train_loss": train_loss,
            "train_acc": correct / max(seen, 1),
            "lr_backbone": next(
                (g["lr"] for g in optimizer.param_groups if g.get("name") == "backbone"),
                optimizer.param_groups[0]["lr"],
            ),
        }
        evaluated = ema.module if ema is not None else model
        if val_dl is not None:
            val_loss, val_acc, cm = evaluate(evaluated, val_dl, num_classes, device, cfg.eval.tta)
            metrics.update(val_loss=val_loss, val_acc=val_acc)
            if not math.isfinite(metrics[metric]):
                raise DivergedError(f"{metric} is {metrics[metric]} after epoch {epoch}; lower the LR")
        metrics["epoch_seconds"] = time.perf_counter() - t0
        result.history.append(metrics)
        if val_dl is None or keep == "last" or not result.best or better(metrics[keep], result.best[keep]):
            result.best, result.best_epoch = metrics, epoch
            result.state_dict = {
                k: v.detach().to("cpu", copy=True) for k, v in evaluated.state_dict().items()
            }
            result.confusion = cm if val_dl is not None else None
        if checkpoint is not None:
            _save(checkpoint, cfg, epoch, model, trainers[0][1], trainers[0][2], result)
        if report is not None:
            report(epoch, metrics)
        if val_dl is not None and cfg.patience is not None:
            if best_watched is None or better(metrics[watch], best_watched):
                best_watched, since_best = metrics[watch], 0
            else:
                since_best += 1
                if since_best >= cfg.patience:
                    result.stopped_early = epoch
                    break
    return result


def _resume_key(cfg: TrialConfig) -> str:
    """What must match for a checkpoint to be resumed: the config, less how batches are split."""
    flat = cfg.flat()
    for k in ("micro_batch", "num_workers"):  # an OOM retry halves micro_batch: same training
        flat.pop(k, None)
    return repr(sorted(flat.items()))


def _save(
    path: Path, cfg: TrialConfig, epoch: int, model: nn.Module, optimizer, scheduler, result: TrialResult
) -> None:
    """Everything to continue after ``epoch``; written to a temporary file, then renamed (atomic)."""
    state = {
        "key": _resume_key(cfg),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": result.history,
        "best": result.best,
        "best_epoch": result.best_epoch,
        "best_state": result.state_dict,
        "rng": torch.get_rng_state(),
        "confusion": None if result.confusion is None else torch.from_numpy(result.confusion),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def saved_state(path: Path, cfg: TrialConfig) -> tuple[int, list[dict[str, float]]]:
    """The epoch a checkpoint can resume after, and the metrics of the epochs it holds; ``(0, [])`` when
    there is none or it belongs to another config."""
    if not path.exists():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated or from an incompatible version: start over
        return 0, []
    if state.get("key") != _resume_key(cfg):
        return 0, []
    return int(state["epoch"]), list(state["history"])


def _restore(
    path: Path, cfg: TrialConfig, model: nn.Module, optimizer, scheduler, result: TrialResult
) -> int:
    """Load a matching checkpoint into the run; return the next epoch. Its epochs are not reported again:
    the caller learns of them from :func:`saved_state`."""
    if not saved_state(path, cfg)[0]:
        return 1
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    result.history, result.best, result.best_epoch = state["history"], state["best"], state["best_epoch"]
    result.state_dict = state["best_state"]
    result.confusion = None if state["confusion"] is None else state["confusion"].numpy()
    return int(state["epoch"]) + 1


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
