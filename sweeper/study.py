"""Optuna orchestration: storage, sampler, pruner, the objective, and the trial count contract.

``--trials N`` is the study's total: re-running the same command after an interruption finishes the
study instead of adding N more. Trials that were interrupted, lost with their worker (and re-queued),
or surplus from a race between workers do not count towards N.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from sweeper import space as space_lib
from sweeper.errors import SweeperError
from sweeper.progress import Progress
from sweeper.spec import Study

log = logging.getLogger("sweeper")
warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats and retries are what we want

NOT_COUNTED = "not_counted"  # user attr: why a FAIL trial does not count towards --trials
FAIL_REASON = "fail_reason"
PRUNE_REASON = "prune_reason"
BEST_EPOCH = "best_epoch"


def default_storage() -> str:
    return f"sqlite:///{(Path.cwd() / 'sweeper.db').as_posix()}"


def resolve_storage(url: str | None) -> str:
    return url or os.environ.get("SWEEPER_STORAGE") or default_storage()


def storage(url: str | None) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats: a trial whose worker died is failed and its params re-queued."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = resolve_storage(url)
    # SQLite: wait for a concurrent writer instead of failing; servers: drop dead pooled connections.
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=int(os.environ.get("SWEEPER_HEARTBEAT", "20")),
            grace_period=int(os.environ.get("SWEEPER_GRACE", "60")),
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    except Exception as e:  # bad URL, server down, missing driver
        raise SweeperError(f"cannot open study storage {url!r}: {str(e).splitlines()[0][:300]}") from None


def build_sampler(spec: Study, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler. Each worker gets its own seed so parallel workers don't propose twins."""
    args = {k: v for k, v in spec.sampler.items() if k != "name"}
    if "seed" in args and args["seed"] is not None:
        args["seed"] = int(args["seed"]) + worker
    name = spec.sampler["name"]
    cls: Callable[..., optuna.samplers.BaseSampler] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
        "grid": lambda **kw: optuna.samplers.GridSampler(space_lib.grid(spec.space), **kw),
    }[name]
    try:
        return cls(**args)
    except TypeError as e:
        raise SweeperError(f"{spec.path}: sampler: bad arguments for {name}: {e}") from None


def build_pruner(spec: Study) -> optuna.pruners.BasePruner:
    args = {k: v for k, v in spec.pruner.items() if k != "name"}
    name = spec.pruner["name"]
    if name == "hyperband":  # k-fold trials report folds * epochs steps
        args.setdefault("max_resource", spec.epochs * int(spec.fixed.get("folds", 1)))
    cls: Callable[..., optuna.pruners.BasePruner] = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "wilcoxon": optuna.pruners.WilcoxonPruner,
        "none": optuna.pruners.NopPruner,
    }[name]
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise SweeperError(f"{spec.path}: pruner: bad arguments for {name}: {e}") from None


def open_study(spec: Study, storage_url: str | None, worker: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # sweeper prints one line per trial
    return optuna.create_study(
        study_name=spec.name,
        storage=storage(storage_url),
        sampler=build_sampler(spec, worker),
        pruner=build_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )


def load_existing(name: str, storage_url: str | None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage(storage_url))
    except KeyError:
        raise SweeperError(
            f"no study {name!r} in {resolve_storage(storage_url)}; run `sweeper run-study {name}` first "
            "or pass the --storage it ran with"
        ) from None


def counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """Trials by state; ``counted`` is what ``--trials N`` compares against."""
    out = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0, "not_counted": 0}
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}  # re-queued stale trials
    for t in trials:
        if t.state == TrialState.FAIL and (t.user_attrs.get(NOT_COUNTED) or t.number in retried):
            out["not_counted"] += 1
        else:
            out[t.state.name.lower()] += 1
    out["counted"] = out["complete"] + out["pruned"] + out["fail"]
    return out


class Surplus(Exception):
    """This trial would take the study past its total: another worker got there first."""


def run(
    spec: Study,
    trials: int,
    objective: Callable[[optuna.Trial], float],
    storage_url: str | None = None,
    timeout: float | None = None,
    worker: int = 0,
    on_trial_end: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``trials`` counted trials (this worker's share of them)."""
    study = open_study(spec, storage_url, worker)
    deadline = None if timeout is None else time.monotonic() + timeout

    def guarded(trial: optuna.Trial) -> float:
        # Exactly N across workers: a trial numbered past the N-th countable one is surplus.
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        c = counts(before)
        if c["counted"] + c["running"] >= trials:
            trial.set_user_attr(NOT_COUNTED, "surplus: the study already had its trials")
            raise Surplus()
        return objective(trial)

    callbacks = [on_trial_end] if on_trial_end else []
    while deadline is None or time.monotonic() < deadline:
        c = counts(study.get_trials(deepcopy=False, states=None))
        if c["counted"] + c["running"] >= trials and not c["waiting"]:
            break
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        study.optimize(guarded, n_trials=1, timeout=remaining, catch=(Exception,), callbacks=callbacks)
        last = study.get_trials(deepcopy=False)[-1] if study.get_trials(deepcopy=False) else None
        if last is not None and last.user_attrs.get(NOT_COUNTED, "").startswith("surplus"):
            break
    return study


def best_trial(study: optuna.Study) -> FrozenTrial:
    try:
        return study.best_trial
    except ValueError:
        raise SweeperError(f"study {study.study_name!r} has no complete trial yet; run more trials") from None


def check_budget(trial: optuna.Trial, run: Any, cfg: Any, num_classes: int, max_params: int) -> None:
    """The parameter budget, checked before any training: a config over it is recorded and never trained.

    The relative excess is set as an Optuna constraint on every trial (feasible when <= 0), so TPE and
    the GP sampler learn to avoid over-budget regions; an over-budget trial ends PRUNED with its reason.
    """
    from sweeper import model as model_lib

    n = model_lib.count_params_for(cfg, num_classes)
    trial.set_user_attr("num_params", n)
    trial.set_constraint("max_params", n / max_params - 1.0)
    if n > max_params:
        reason = (
            f"not trained: {cfg.backbone} with a {cfg.head} head has {n / 1e6:.1f}M parameters, "
            f"over the study's budget of {max_params / 1e6:.1f}M (constraints.max_params)"
        )
        trial.set_user_attr(PRUNE_REASON, reason)
        run.set_tags({"num_params": n})
        run.end("PRUNED", reason)
        raise optuna.TrialPruned(reason)


def make_objective(
    spec: Study, data: Any, tracker: Any, progress: Progress | None = None
) -> Callable[[optuna.Trial], float]:
    """The objective: sample params, resolve the config, train with per-epoch reports, track it all.

    A pruned trial closes its MLflow run as PRUNED, a failing one as FAIL with its reason; the
    exception then goes on to Optuna, which records the trial's state. ``progress`` hears of each
    trial's start and epochs (its end comes from the ``on_trial_end`` callback of :func:`run`).
    """
    from sweeper import artifacts, train

    progress = progress or Progress(0, spec.epochs, spec.metric)

    def objective(trial: optuna.Trial) -> float:
        progress.trial_started(trial.number)
        params = space_lib.suggest(trial, spec.space)
        cfg = spec.resolve(params)
        run = tracker.start(
            run_name=f"trial-{trial.number:04d}",
            params=cfg.flat(),
            tags={
                "study": spec.name,
                "trial_number": trial.number,
                "state": "RUNNING",
                "sweeper.searched": ",".join(sorted(spec.space)),
            },
        )
        trial.set_user_attr("mlflow_run_id", run.run_id)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            run.log_metrics(epoch, metrics)
            progress.epoch(trial.number, epoch, metrics)
            value = metrics[spec.metric]
            trial.report(value, epoch)
            if trial.should_prune():
                reason = f"pruned after epoch {epoch}: {spec.metric}={value:.4f}"
                trial.set_user_attr(PRUNE_REASON, reason)
                run.end("PRUNED", reason)
                raise optuna.TrialPruned(reason)

        try:
            if spec.max_params is not None:
                check_budget(trial, run, cfg, len(data.classes), spec.max_params)
            result = train.run_trial(cfg, data, report, metric=spec.metric)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(NOT_COUNTED, "interrupted")
            trial.set_user_attr(FAIL_REASON, "interrupted (Ctrl-C)")
            run.end("FAIL", "interrupted (Ctrl-C)")
            raise
        except BaseException as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
            trial.set_user_attr(FAIL_REASON, reason)
            with tracker.staging() as d:  # the full traceback, for bugs; the console gets one line
                (d / "error.txt").write_text(traceback.format_exc())
                run.log_dir(d)
            run.end("FAIL", reason)
            raise
        trial.set_user_attr(BEST_EPOCH, result.best_epoch)
        trial.set_user_attr("num_params", result.num_params)
        with tracker.staging() as d:
            artifacts.write_trial(d, cfg, data.classes, result)
            run.log_dir(d)
        run.set_tags({"best_epoch": result.best_epoch})
        run.log_metrics(result.best_epoch, {f"best_{spec.metric}": result.best[spec.metric]})
        run.end("COMPLETE")
        return result.best[spec.metric]

    return objective
