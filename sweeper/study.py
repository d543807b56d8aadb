"""Optuna orchestration: storage, sampler, pruner, the objective, and the trial count contract.

``--trials N`` is the study's total: re-running the same command after an interruption finishes the
study instead of adding N more. Trials that were interrupted, lost with their worker (and re-queued),
or surplus from a race between workers do not count towards N.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import re
import socket
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
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
MLFLOW_RUN = "mlflow_run_id"
WORKER = "worker"  # host:pid/slot[/gpuN] that ran the trial
LOST = "worker_lost"  # the trial process died; its params were re-queued
OOM_RETRY = "oom_retry"  # how an out-of-memory trial was retried
INFEASIBLE = "infeasible"  # why a trial's result is infeasible (diverged)
RESUMED = "resumed_from_epoch"  # the epoch checkpoint a retried trial started from
DIVERGED = "diverged"  # Optuna constraint on every finished trial: 1.0 = the loss diverged (infeasible)
SAME_ERROR_LIMIT = 3  # this many identical failures in a row stop the sweep

Objective = Callable[[optuna.Trial], float]
RETRY = RetryHeartbeatStaleTrialCallback(max_retry=2)
"""Re-queues a lost trial's params as a new trial, at most twice per original trial."""


def default_storage() -> str:
    return f"sqlite:///{(Path.cwd() / 'sweeper.db').as_posix()}"


def resolve_storage(url: str | None) -> str:
    return with_driver(url or os.environ.get("SWEEPER_STORAGE") or default_storage())


def with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (a dependency); SQLAlchemy alone would want psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def heartbeat_interval() -> int:
    """Seconds between a running trial's heartbeats (``$SWEEPER_HEARTBEAT``)."""
    return int(os.environ.get("SWEEPER_HEARTBEAT", "20"))


def storage(
    url: str | None, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats: a trial whose worker died is failed and its params re-queued.

    SQLite: every transaction takes the write lock as it begins (``BEGIN IMMEDIATE``) and waits for
    it up to 60 s. The default, upgrading a read to a write mid-transaction, is the case SQLite cannot
    wait for: it answers "database is locked" at once when two workers do it together. One process
    writes a local SQLite file (:func:`workers.single_writer` refuses a second one); its workers
    take turns. Servers (PostgreSQL) get a pool that checks connections before use.

    Args:
        on_stale: called for each trial this process finds stale (its worker died); the default only
            re-queues the trial's params with Optuna's RetryHeartbeatStaleTrialCallback.
    """
    from optuna.storages import RDBStorage

    url = resolve_storage(url)
    engine_kwargs: dict[str, Any]
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # seconds a transaction waits for the lock
    else:
        engine_kwargs = {"pool_pre_ping": True, "max_overflow": 20}
    from sqlalchemy.exc import IntegrityError

    for attempt in range(5):
        try:
            store = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval(),
                grace_period=int(os.environ.get("SWEEPER_GRACE", "60")),
                heartbeat_stale_trial_callback=on_stale or RETRY,
            )
            break
        except IntegrityError:  # workers starting together on a new database: one created the schema
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
        except Exception as e:  # bad URL, server down, missing driver
            raise SweeperError(
                f"cannot open study storage {display_url(url)!r}: {str(e).splitlines()[0][:300]}"
            ) from None
    if url.startswith("sqlite"):
        _begin_immediate(store.engine)
    return store


def _begin_immediate(engine: Any) -> None:
    """SQLAlchemy's recipe for pysqlite: the driver stops issuing BEGIN itself, the engine says
    ``BEGIN IMMEDIATE``; connections opened before the listeners existed are dropped."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()


def sampler_seed(seed: int, worker: int, existing: int) -> int:
    """The study's seed for a fresh single worker; a distinct, reproducible one for every other worker and
    for every resumed run, so neither parallel workers nor a resumed sweep propose the same params again."""
    if worker == 0 and existing == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, existing]).generate_state(1)[0])


def build_sampler(spec: Study, worker: int = 0, existing: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per worker and per resume (see :func:`sampler_seed`)."""
    args = {k: v for k, v in spec.sampler.items() if k != "name"}
    if "seed" in args and args["seed"] is not None:
        args["seed"] = sampler_seed(int(args["seed"]), worker, existing)
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


def open_study(
    spec: Study, storage_url: str | None, worker: int = 0, store: optuna.storages.BaseStorage | None = None
) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # sweeper prints one line per trial
    study = optuna.create_study(
        study_name=spec.name,
        storage=store or storage(storage_url),
        sampler=build_sampler(spec, worker),
        pruner=build_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )
    existing = len(study.get_trials(deepcopy=False))
    if existing:  # a resumed study: don't replay the first run's random draws
        study.sampler = build_sampler(spec, worker, existing)
    return study


def load_existing(name: str, storage_url: str | None) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage(storage_url))
    except KeyError:
        raise SweeperError(
            f"no study {name!r} in {display_url(resolve_storage(storage_url))}; "
            f"run `sweeper run-study {name}` first or pass the --storage it ran with"
        ) from None


def display_url(url: str) -> str:
    """A storage URL fit to print: the password masked."""
    if "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def counts(trials: list[FrozenTrial], before: int | None = None) -> dict[str, int]:
    """Trials by state; ``counted`` is what ``--trials N`` compares against.

    Args:
        before: count only trials numbered below this (a retry's link to its lost original is still seen).
    """
    out = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "waiting": 0, "not_counted": 0}
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}  # re-queued lost trials
    for t in trials:
        if before is not None and t.number >= before:
            continue
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
    objective: Objective | Sequence[Objective],
    storage_url: str | None = None,
    timeout: float | None = None,
    worker: int = 0,
    on_trial_end: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    tracker: Any = None,
) -> optuna.Study:
    """Run trials until the study holds ``trials`` counted trials, with one worker per objective.

    Workers are threads of this process, each with its own sampler seed; the training runs in a child
    process per trial (see :mod:`sweeper.workers`). Every process on every machine runs the same loop
    against the same storage and agrees on the count: a worker stops when the study has its trials,
    and waits while the last ones run elsewhere, so that a trial whose worker dies (its heartbeat goes
    stale) is re-queued and finished here. The same error in several trials in a row stops the sweep.

    Args:
        objective: one per worker (each bound to its GPU); a single callable means one worker.
        worker: index of the first worker's sampler seed offset.
        tracker: the MLflow tracker: runs of trials whose worker died are closed through it.

    Raises:
        KeyboardInterrupt: after Ctrl-C (or SIGTERM) every worker has closed its trial.
        SweeperError: a store cannot be opened, another process writes the local SQLite files, or
            the same error failed several trials in a row.
    """
    from sweeper import workers

    objectives: list[Objective] = [objective] if callable(objective) else list(objective)
    url = resolve_storage(storage_url)
    local = workers.sqlite_path(url) is not None
    lost = _Lost(tracker)
    with workers.single_writer([url, getattr(tracker, "uri", "") or ""]):
        store = storage(url, on_stale=lost)
        seed = worker if local else worker + _process_seed_offset()
        studies = [open_study(spec, url, seed, store)]
        for i in range(1, len(objectives)):  # one Study object per worker, each with its own sampler
            studies.append(
                optuna.load_study(
                    study_name=spec.name,
                    storage=store,
                    pruner=build_pruner(spec),
                    sampler=build_sampler(spec, seed + i),
                )
            )
        study = studies[0]
        if local:  # this process holds the only write lock: a RUNNING trial's worker is dead
            _fail_orphans(study, lost)
        _close_lost_runs(study, tracker)
        deadline = None if timeout is None else time.monotonic() + timeout
        streak = _Streak(SAME_ERROR_LIMIT)
        ended = threading.Event()  # a trial ended here: a waiting worker looks again at once
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [streak, lambda st, t: ended.set()]
        if on_trial_end is not None:
            callbacks.append(on_trial_end)
        halt = threading.Event()
        errors: list[BaseException] = []
        workers.INTERRUPTED.clear()
        done = [threading.Event() for _ in objectives]

        def serve(i: int) -> None:
            try:
                _work(studies[i], trials, objectives[i], deadline, callbacks, halt, ended, streak, errors)
            finally:
                done[i].set()
                ended.set()

        for i in range(len(objectives)):
            threading.Thread(target=serve, args=(i,), name=f"sweeper-worker-{i}", daemon=True).start()
        # Waiting on events, not Thread.join: a join interrupted by Ctrl-C can mark a live thread stopped
        # (CPython 3.11), and the process would exit with its trials still RUNNING.
        try:
            _wait_all(done)
        except KeyboardInterrupt:
            workers.INTERRUPTED.set()  # each worker kills its trial process and closes its trial
            halt.set()
            ended.set()
            _wait_all(done)
            raise
        finally:
            _close_lost_runs(study, tracker)
        if errors:
            raise errors[0]
    return study


def _wait_all(events: list[threading.Event]) -> None:
    for e in events:
        while not e.wait(0.2):
            pass


def _work(
    study: optuna.Study,
    trials: int,
    objective: Objective,
    deadline: float | None,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
    halt: threading.Event,
    ended: threading.Event,
    streak: _Streak,
    errors: list[BaseException],
) -> None:
    """One worker: run trials until the study has its total (or time is up, or another worker failed)."""

    def guarded(trial: optuna.Trial) -> float:
        # Exactly N across workers: a trial numbered past the N-th countable one is surplus.
        c = counts(study.get_trials(deepcopy=False), before=trial.number)
        if c["counted"] + c["running"] + c["waiting"] >= trials:
            trial.set_user_attr(NOT_COUNTED, "surplus: the study already had its trials")
            raise Surplus()
        return objective(trial)

    poll = max(1.0, heartbeat_interval() / 2)
    try:
        while not halt.is_set():
            if streak.error:
                raise SweeperError(streak.error)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            with warnings.catch_warnings():  # experimental in Optuna, and exactly what is needed here
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # dead workers' trials: FAIL, params re-queued
            c = counts(study.get_trials(deepcopy=False))
            if c["counted"] >= trials:
                return
            if not c["waiting"] and c["counted"] + c["running"] >= trials:
                ended.wait(poll)  # the last trials run elsewhere; if their worker dies they come back here
                ended.clear()
                continue
            study.optimize(guarded, n_trials=1, timeout=remaining, catch=(Exception,), callbacks=callbacks)
    except KeyboardInterrupt:
        return
    except BaseException as e:  # a store went away, a failure streak: stop the other workers too
        errors.append(e)
        halt.set()
        ended.set()


def _process_seed_offset() -> int:
    """Processes sharing a server storage must not share sampler seeds, or they propose twins."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000


class _Lost:
    """A trial whose worker died: Optuna re-queues its params; its MLflow run is closed as failed."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        RETRY(study, trial)
        run_id = trial.user_attrs.get(MLFLOW_RUN)
        if run_id and self.tracker is not None:
            self.tracker.close_run(
                run_id,
                "FAIL",
                f"worker lost ({trial.user_attrs.get(WORKER, '?')}): "
                "its heartbeat stopped; the params were re-queued",
            )


def _fail_orphans(study: optuna.Study, lost: _Lost) -> None:
    """Fail and re-queue RUNNING trials at once, where no other process can be running them."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # finished meanwhile
            continue
        lost(study, t)


def _close_lost_runs(study: optuna.Study, tracker: Any) -> None:
    """Safety net: any MLflow run still RUNNING whose trial has ended takes the trial's final state."""
    if tracker is None:
        return
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    tracker.close_stale_runs(states)


class _Streak:
    """The same error in ``limit`` trials in a row is a broken configuration, not bad luck: stop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.keys: list[str | None] = []
        self.error: str | None = None
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(NOT_COUNTED) or trial.user_attrs.get(LOST):
            return  # surplus, interrupted, lost and re-queued: says nothing about the configuration
        reason = trial.user_attrs.get(FAIL_REASON) if trial.state == TrialState.FAIL else None
        with self._lock:
            self.keys = [*self.keys, re.sub(r"\d+", "#", reason) if reason else None][-self.limit :]
            if len(self.keys) == self.limit and self.keys[0] is not None and len(set(self.keys)) == 1:
                self.error = (
                    f"stopped after {self.limit} trials in a row failed with the same error (last: trial "
                    f"{trial.number}): {reason}. That is a bug in the study's configuration, not bad luck; "
                    "the full traceback is error.txt in the trial's MLflow run. Fix it and re-run the command"
                )


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


def worst_value(spec: Study) -> float:
    """The value a diverged trial is recorded with: the worst the metric can be."""
    if spec.metric == "val_acc":
        return 0.0 if spec.direction == "maximize" else 1.0
    return float("inf") if spec.direction == "minimize" else float("-inf")


def checkpoint_path(spec: Study, trial: FrozenTrial) -> Path:
    """A trial's epoch checkpoint, named after the first trial of its retry chain so that a retry on any
    worker sharing the folder (``$SWEEPER_CHECKPOINTS``, default ``./checkpoints``) resumes it."""
    origin = trial.system_attrs.get("failed_trial", trial.number)
    root = Path(os.environ.get("SWEEPER_CHECKPOINTS") or "checkpoints")
    return (root / spec.name / f"trial-{origin:04d}.pt").resolve()


def _drop(checkpoint: Path) -> None:
    """A finished trial's checkpoint, and the study's checkpoint folder once it is empty."""
    checkpoint.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        checkpoint.parent.rmdir()


def _frozen(trial: optuna.Trial) -> FrozenTrial:
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def _requeue(trial: optuna.Trial) -> None:
    """Queue a running trial's params again, the way Optuna retries a stale trial; the notes stay here."""
    frozen = copy.copy(_frozen(trial))
    frozen.user_attrs = {}
    RETRY(trial.study, frozen)


def make_objective(
    spec: Study,
    data: Any,
    tracker: Any,
    progress: Progress | None = None,
    gpu: str | None = None,
    slot: int = 0,
    threads: int | None = None,
) -> Objective:
    """The objective: sample params, resolve the config, train in a fresh process, track it all.

    A pruned trial closes its MLflow run as PRUNED, a failing one as FAIL with its reason; the
    exception then goes on to Optuna, which records the trial's state. By kind: out of GPU memory is
    retried once at half the micro-batch (the same effective batch); a diverged loss is a result,
    recorded infeasible so that samplers avoid the region; a lost trial process (or Ctrl-C) re-queues
    the params and the retry resumes from the last epoch checkpoint.

    Args:
        progress: hears of each trial's start and epochs (its end comes from the ``on_trial_end``
            callback of :func:`run`).
        gpu: ``CUDA_VISIBLE_DEVICES`` for this worker's trial processes.
        slot: this worker's index on the machine (recorded on each trial with host and pid).
        threads: torch CPU threads per trial process, when several share the cores.
    """
    from sweeper import workers

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
        trial.set_user_attr(MLFLOW_RUN, run.run_id)
        trial.set_user_attr(WORKER, workers.worker_name(slot, gpu))
        reported: set[int] = set()

        def report(epoch: int, metrics: dict[str, float]) -> None:
            if epoch in reported:  # replayed from the checkpoint after an OOM retry: already recorded
                return
            reported.add(epoch)
            run.log_metrics(epoch, metrics)
            progress.epoch(trial.number, epoch, metrics)
            value = metrics[spec.metric]
            if not math.isfinite(value):
                raise workers.Diverged(f"{spec.metric} is {value} after epoch {epoch}; lower the LR")
            trial.report(value, epoch)
            if trial.should_prune():
                reason = f"pruned after epoch {epoch}: {spec.metric}={value:.4f}"
                trial.set_user_attr(PRUNE_REASON, reason)
                run.end("PRUNED", reason)
                raise optuna.TrialPruned(reason)

        checkpoint = checkpoint_path(spec, _frozen(trial))
        with tracker.staging() as out:
            job = workers.Job(cfg, data, spec.metric, out, checkpoint, gpu, threads)
            try:
                if spec.max_params is not None:
                    check_budget(trial, run, cfg, len(data.classes), spec.max_params)
                outcome = _train(trial, run, job, report)
            except optuna.TrialPruned:
                _drop(checkpoint)
                trial.set_constraint(DIVERGED, 0.0)
                raise
            except workers.Diverged as e:
                _drop(checkpoint)
                trial.set_constraint(DIVERGED, 1.0)  # infeasible: TPE and GP learn to avoid the region
                trial.set_user_attr(INFEASIBLE, f"diverged: {e.reason}")
                run.end("INFEASIBLE", f"diverged: {e.reason}")
                return worst_value(spec)
            except (KeyboardInterrupt, workers.WorkerLost) as e:
                _requeue(trial)  # the checkpoint stays: the retry resumes from it
                if isinstance(e, KeyboardInterrupt):
                    reason = "interrupted (Ctrl-C)"
                    trial.set_user_attr(NOT_COUNTED, "interrupted")
                else:
                    reason = f"worker lost: {e}; the params were re-queued"
                    trial.set_user_attr(LOST, str(e))
                trial.set_user_attr(FAIL_REASON, reason)
                run.end("FAIL", reason)
                raise
            except BaseException as e:
                _drop(checkpoint)
                failure = e if isinstance(e, workers.TrialFailure) else None
                first = str(e).splitlines()[0] if str(e) else ""
                reason = (failure.reason if failure else f"{type(e).__name__}: {first}")[:500]
                trial.set_user_attr(FAIL_REASON, reason)
                with tracker.staging() as d:  # the full traceback, for bugs; the console gets one line
                    (d / "error.txt").write_text(
                        failure.details if failure and failure.details else traceback.format_exc()
                    )
                    run.log_dir(d)
                run.end("FAIL", reason)
                raise
            _drop(checkpoint)
            run.log_dir(out)
        trial.set_constraint(DIVERGED, 0.0)
        trial.set_user_attr(BEST_EPOCH, outcome.best_epoch)
        trial.set_user_attr("num_params", outcome.num_params)
        run.set_tags({"best_epoch": outcome.best_epoch})
        run.log_metrics(outcome.best_epoch, {f"best_{spec.metric}": outcome.best[spec.metric]})
        run.end("COMPLETE")
        return outcome.best[spec.metric]

    return objective


def _train(trial: optuna.Trial, run: Any, job: Any, report: Callable[[int, dict[str, float]], None]) -> Any:
    """Train in a fresh process; on out-of-memory, once more at half the micro-batch (recorded)."""
    from sweeper import workers

    def attempt(j: Any) -> Any:
        outcome = workers.train_in_process(j, report)
        if outcome.resumed_from:
            trial.set_user_attr(RESUMED, outcome.resumed_from)
            run.set_tags({RESUMED: outcome.resumed_from})
        return outcome

    try:
        return attempt(job)
    except workers.OutOfMemory as e:
        smaller = workers.halve_micro_batch(job.cfg)
        if smaller is None:
            raise
        was = job.cfg.micro_batch or job.cfg.batch_size
        note = (
            f"out of memory at micro_batch {was}; retried at {smaller.micro_batch} with gradient "
            f"accumulation, batch_size {job.cfg.batch_size} unchanged"
        )
        trial.set_user_attr(OOM_RETRY, note)
        run.set_tags({OOM_RETRY: note, "micro_batch_used": smaller.micro_batch})
        try:
            return attempt(dataclasses.replace(job, cfg=smaller))
        except workers.OutOfMemory as again:
            raise workers.OutOfMemory(
                f"{again.reason} (also at micro_batch {smaller.micro_batch})", again.details
            ) from e
