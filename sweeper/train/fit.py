"""One fine-tuning trial: build the model, train epoch by epoch, report, keep the best epoch's weights;
k-fold trials train one such run per fold.

This module knows nothing of Optuna or MLflow. The caller passes ``report(epoch, metrics)``; a pruner
stops the run by raising from inside it, and the exception passes through untouched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sweeper.data import images as data_lib
from sweeper.data import loaders
from sweeper.errors import SweeperError
from sweeper.study.config import FOLDS_KEEP_ONE, TrialConfig
from sweeper.train import checkpoints, evaluation, sensitivity
from sweeper.train import model as model_lib
from sweeper.train.result import TrialResult
from sweeper.train.runs import DivergedError, EarlyStop, Kept, Run

__all__ = ["DivergedError", "TrialResult", "fit", "run_trial"]

Report = Callable[[int, dict[str, float]], None]


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

    With ``cfg.folds = k >= 2`` see :func:`run_folds`.

    Args:
        report: called after every epoch with that epoch's metrics; may raise to stop the run.
        metric: the study's objective, ``val_acc`` (higher is better) or ``val_loss`` (lower is better).
        train_on_val: refit mode: train on train+val, no validation.
        checkpoint: an epoch checkpoint file, rewritten after every epoch; when it exists (the retry of a
            trial whose worker died) training resumes after its epoch, in its fold (the restored epochs
            are not reported again). Merged replicas and the EMA are saved and resumed too.
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
    return run_folds(cfg, data, report, metric=metric, device=device, checkpoint=checkpoint)


def run_folds(
    cfg: TrialConfig,
    data: data_lib.ImageFolderData,
    report: Report | None,
    *,
    metric: str,
    device: torch.device,
    checkpoint: Path | None,
) -> TrialResult:
    """k-fold: one run per stratified fold of train+val, or of train alone with ``fold_holdout`` (val then
    is a fixed hold-out, never trained on, scored by every fold's kept weights and by their ensemble).

    The result's metrics are the means over folds and every fold's weights are kept (for an ensemble).
    Fold ``f``'s epoch ``e`` is reported as step ``f * epochs + e``, so a pruner compares like with like.
    """
    if cfg.checkpoint == "both":  # never silently keep one of the two asked for
        raise SweeperError(FOLDS_KEEP_ONE)
    pool = data.train if cfg.fold_holdout else data.train + data.val
    holdout = data.val if cfg.fold_holdout else None
    results = [
        checkpoints.restore_result(TrialResult(), s) for s in checkpoints.finished_folds(checkpoint, cfg)
    ]
    for f, (train_split, val_split) in enumerate(data_lib.kfold(pool, cfg.folds, cfg.seed)):
        if f < len(results):  # finished before the checkpoint was written
            continue
        fold_report = None
        if report is not None:

            def fold_report(e: int, m: dict[str, float], f: int = f) -> None:
                report(f * cfg.epochs + e, {**m, "fold": f})

        fold = checkpoints.Fold(f, list(results))
        results.append(
            fit(
                cfg,
                train_split,
                val_split,
                data.classes,
                fold_report,
                metric=metric,
                device=device,
                checkpoint=checkpoint,
                holdout=holdout,
                fold=fold,
            )
        )
    combined = _combine_folds(results)
    if holdout is not None:
        combined.best.update(_ensemble_scores(results, holdout))
    return combined


def _combine_folds(results: list[TrialResult]) -> TrialResult:
    """Fold means of the kept epochs' metrics, the summed (out-of-fold) confusion, every fold's weights;
    each fold's own value of a metric that is not per epoch (hold-out) as ``<metric>_fold<f>``."""
    keys = set.intersection(*(set(r.best) for r in results))
    best = {k: float(np.mean([r.best[k] for r in results])) for k in sorted(keys)}
    for f, r in enumerate(results):
        best.update({f"{k}_fold{f}": v for k, v in r.best.items() if k.startswith("holdout_")})
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


def _ensemble_scores(results: list[TrialResult], holdout: data_lib.Split) -> dict[str, float]:
    """The fold ensemble (mean probabilities) on the hold-out: its accuracy and NLL."""
    probs = torch.stack([r.holdout_probs for r in results if r.holdout_probs is not None]).mean(0)
    labels = torch.as_tensor(holdout.labels)
    return {
        "holdout_ensemble_acc": float((probs.argmax(1) == labels).float().mean()),
        "holdout_ensemble_loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),
    }


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
    holdout: data_lib.Split | None = None,
    fold: checkpoints.Fold | None = None,
) -> TrialResult:
    """Train one model on ``train_split``, validating on ``val_split`` (None: refit, keep the last epoch).

    Args:
        probe: labelled images for the sensitive-layer analysis when there is no ``val_split``.
        checkpoint: the epoch checkpoint to resume from and rewrite (see :func:`run_trial`).
        stop_epoch: the last epoch to train; the LR schedule still spans ``cfg.epochs``.
        holdout: images never trained on, scored once with the kept weights (``holdout_acc``/``_loss``).
        fold: the k-fold trial's fold and finished folds, saved with the checkpoint.
    """
    device = device or loaders.pick_device()
    # start-up: a trial's (its own process's) from its start, another fold's from here
    started = _process_started() if fold is None or fold.index == 0 else time.perf_counter()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = model_lib.create(cfg, len(classes))
    dcfg = model_lib.data_config(model, cfg.img_size, cfg.interpolation)
    loaders.setup_model(model, cfg, device)
    # the eval cache holds what some fold or run evaluates: with k folds, every file of the pool
    evaluated: tuple[data_lib.Split | None, ...] = (
        val_split,
        holdout,
        probe if cfg.sensitivity.action != "none" else None,
    )
    evaluated += (train_split,) if cfg.folds > 1 else ()
    pipes = loaders.Pipelines(cfg, dcfg, device, train_split, val_split, probe, holdout, evaluated=evaluated)
    val_dl = None if val_split is None else pipes.eval_loader(val_split, cfg, device)
    own, sensitive = _sensitivity(model, cfg, pipes, val_split if val_split is not None else probe, device)
    run = Run(
        cfg, model, pipes.train(train_split), pipes, device, {**_boosted(model, cfg), **own}, len(classes)
    )
    result = TrialResult(data_config=dcfg, num_params=model_lib.count_params(model), sensitive=sensitive)
    kept = Kept(cfg, metric)
    stopper = EarlyStop(cfg.patience, metric if kept.watch == "last" else kept.watch)
    start = 1 if checkpoint is None else checkpoints.restore(checkpoint, cfg, run, result, fold)
    for metrics in result.history:  # early stopping's state, as it was
        stopper.update(metrics)
    last = cfg.epochs if stop_epoch is None else max(1, min(stop_epoch, cfg.epochs))
    for epoch in range(start, 0 if result.stopped_early else last + 1):
        metrics, cm = run.epoch(epoch, val_dl, metric)
        if epoch == start and run.first_batch_at is not None:  # imports, model, caches, loader workers
            metrics["time_to_first_batch_s"] = run.first_batch_at - started
        result.history.append(metrics)
        kept.update(result, epoch, metrics, cm, run.evaluated)
        if val_dl is not None and stopper.update(metrics):
            result.stopped_early = epoch
        if checkpoint is not None:
            checkpoints.save(checkpoint, cfg, epoch, run, result, fold)
        if report is not None:
            report(epoch, metrics)
        if result.stopped_early:
            break
    if holdout is not None:
        _score_holdout(result, model, pipes.eval_loader(holdout, cfg, device), holdout.labels, cfg.eval.tta)
    return result


def _process_started() -> float:
    """The ``perf_counter`` time this process started (Linux's /proc; elsewhere: now)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.perf_counter() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter()


def _score_holdout(
    result: TrialResult, model: nn.Module, dl: loaders.DeviceLoader, labels: tuple[int, ...], tta: bool
) -> None:
    """The kept weights on the hold-out: ``holdout_acc`` / ``holdout_loss`` and the probabilities."""
    model.load_state_dict(result.state_dict)
    probs = torch.cat([p.cpu() for p, _ in evaluation.predict_logits(model, dl, dl.device, tta)])
    target = torch.as_tensor(labels)
    result.holdout_probs = probs
    result.best = {
        **result.best,
        "holdout_acc": float((probs.argmax(1) == target).float().mean()),
        "holdout_loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), target)),
    }


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
    probe_dl = pipes.eval_loader(probe, cfg, device)
    ranked = sensitivity.rank(model, probe_dl, device, sens.batches, model_lib.classifier_param_ids(model))
    top = [name for name, _ in ranked[: sens.top_k]]
    if sens.action == "freeze":
        sensitivity.freeze(model, top)
        return {}, ranked[: sens.top_k]
    return sensitivity.own_groups(top, sens), ranked[: sens.top_k]


def _boosted(model: nn.Module, cfg: TrialConfig) -> dict[str, dict[str, float]]:
    """Tensors named by ``cfg.boost``: pattern i's get ``sensitivity.lr`` / ``.weight_decay`` value i."""
    out: dict[str, dict[str, float]] = {}
    for i, pattern in enumerate(cfg.boost):
        for name in model_lib.matching(model, (pattern,), "boost"):
            out.setdefault(name, sensitivity.rank_values(i, cfg.sensitivity))
    return out
