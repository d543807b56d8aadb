"""One trial: suggest -> resolve -> train in a fresh process -> an :class:`Outcome` -> :func:`finish`, once.

Whatever happens to a trial (it completes, is pruned or over budget, diverges, fails, loses its process
or is interrupted), training hands back an :class:`Outcome` value, and :func:`finish` alone writes it
to Optuna (state, attributes, constraints), to its MLflow run and to its checkpoint folder. The
progress display hears of the end from the sweep's end-of-trial callback, which reads what finish wrote.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import optuna
from optuna.trial import FrozenTrial

from sweeper import faults
from sweeper.data.images import ImageFolderData
from sweeper.errors import SweeperError, no_space
from sweeper.meter import Work
from sweeper.store import record as rec
from sweeper.store import stores, tracking
from sweeper.store.tracking import RunLog, Tracker
from sweeper.study import objectives
from sweeper.study import space as space_lib
from sweeper.study.config import TrialConfig
from sweeper.study.design import CONFIRM, DESIGN_ROW
from sweeper.study.spec import Study
from sweeper.sweep import workers
from sweeper.sweep.progress import Progress
from sweeper.sweep.workers import Listener
from sweeper.train.process import Job, Trained

Objective = Callable[[optuna.Trial], "float | list[float]"]
State = Literal["complete", "pruned", "infeasible", "failed", "lost", "interrupted", "halted"]
"""``halted``: the trial cannot go on here (a store stayed away, the disk is full); not counted,
re-queued, and the sweep stops with the reason."""


@dataclass(frozen=True)
class Outcome:
    """How one trial ended. ``value`` for complete and infeasible trials; ``details`` a traceback."""

    state: State
    value: float | None = None
    reason: str = ""
    kind: str = ""  # failed: oom / error
    details: str = ""
    trained: Trained | None = None  # of a complete trial
    tags: dict[str, Any] = field(default_factory=dict)  # extra MLflow tags


class TrialFailed(Exception):
    """Raised to Optuna after :func:`finish` so that it records the trial FAIL (its reason is recorded)."""


class Halt(SweeperError):
    """Raised after :func:`finish` of a halted trial: the sweep stops with this one-line reason."""


@dataclass
class Context:
    """What :func:`finish` writes to: the Optuna trial, its MLflow run, its checkpoint and staging folder."""

    spec: Study
    trial: optuna.Trial
    run: RunLog
    checkpoint: Path
    out: Path  # the trial process's artifact folder
    tracker: Tracker
    recorded: set[int] = field(default_factory=set)  # epochs reported to Optuna and MLflow
    requeued: bool = False  # the params were queued again (once, however often finish runs)


def make_objective(
    spec: Study,
    data: ImageFolderData,
    tracker: Tracker,
    progress: Progress | None = None,
    gpu: str | None = None,
    slot: int = 0,
    threads: int | None = None,
) -> Objective:
    """The objective: sample params, resolve the config, train in a fresh process, finish the trial.

    Args:
        progress: hears of each trial's start and epochs.
        gpu: ``CUDA_VISIBLE_DEVICES`` for this worker's trial processes.
        slot: this worker's index on the machine (recorded on each trial with host and pid).
        threads: torch CPU threads per trial process, when several share the cores.
    """
    progress = progress or Progress(0, spec.epochs, spec.metric)
    dataset = _dataset(data)  # the MLflow dataset input of every trial run (fingerprinted once)

    def objective(trial: optuna.Trial) -> float | list[float]:
        progress.trial_started(trial.number)
        params = space_lib.suggest(trial, spec.space)
        cfg = spec.resolve(params)
        absent = space_lib.absent(spec.space, params)  # conditional, condition false: the default holds
        trial.set_user_attr(rec.CONFIG, rec.config_json(cfg, params))
        trial.set_user_attr(rec.WORKER, workers.worker_name(slot, gpu))
        faults.hit("setup-before-run")
        with tracking.staging(spec.name) as out:
            ctx = Context(spec, trial, tracking.NO_RUN, checkpoint_path(spec, _frozen(trial)), out, tracker)
            return finish_safely(ctx, setup_and_train(ctx, cfg, absent))

    def setup_and_train(ctx: Context, cfg: TrialConfig, absent: list[str]) -> Outcome:
        try:
            ctx.run = _open_run(ctx, cfg, absent)
            tracker.log_dataset(ctx.run.run_id, **dataset)
            job = workers.Job(
                cfg, data, spec.metric, ctx.out, ctx.checkpoint, gpu, threads, latency=_timed(spec)
            )
            with tracker.system_metrics(ctx.run.run_id):
                return attempt(ctx, job, progress, len(data.classes))
        except stores.StoreDown as e:  # a store stayed away: this trial does not count
            return Outcome("halted", reason=str(e), kind="store")
        except Exception as e:  # the trial's MLflow run could not be set up (or closed its metrics)
            return unexpected(e, "setting up the trial's MLflow run")

    return objective


def finish_safely(ctx: Context, outcome: Outcome) -> float | list[float]:
    """:func:`finish`; whatever goes wrong inside it still ends the trial with its reason: a store that
    stayed away halts it (re-queued, not counted), a full disk halts the sweep in one line, anything else
    fails the trial with what broke. No trial ends FAIL without a reason, no run is left open by this."""
    try:
        return finish(ctx, outcome)
    except (optuna.TrialPruned, TrialFailed, Halt, KeyboardInterrupt):
        raise  # how finish says the trial ended
    except stores.StoreDown as e:
        return finish(ctx, Outcome("halted", reason=str(e), kind="store"))
    except Exception as e:
        _finish_broken(ctx, unexpected(e, "recording the trial's result"))


def unexpected(e: BaseException, what: str) -> Outcome:
    """An exception on this side of the process seam, as an outcome: a full disk halts, the rest fails."""
    first = str(e).splitlines()[0] if str(e) else ""
    if no_space(e):
        reason = (
            f"no space left on the device while {what} ({type(e).__name__}: {first}); free space on "
            "the MLflow artifact store, the checkpoint folder (SWEEPER_CHECKPOINTS) or the temp folder, "
            "then re-run"
        )
        return Outcome("halted", reason=reason[:1000], kind="disk")
    reason = f"{what} failed: {type(e).__name__}: {first}"[:500]
    return Outcome("failed", reason=reason, kind="error", details=traceback.format_exc())


def _finish_broken(ctx: Context, outcome: Outcome) -> NoReturn:
    """What :func:`finish` could not write, written as far as the stores allow: the trial's reason on the
    trial (Optuna), its run closed (MLflow; else the next run's safety net closes it), then the ending."""
    t = ctx.trial
    with contextlib.suppress(Exception):
        t.set_user_attr(rec.FAIL_REASON, outcome.reason)
        t.set_user_attr(rec.FAIL_KIND, outcome.kind)
        if outcome.state == "halted":
            t.set_user_attr(rec.NOT_COUNTED, "halted")
            _settle(ctx, outcome)
    with contextlib.suppress(Exception):
        ctx.run.end("FAIL", outcome.reason)
    if outcome.state == "halted":
        raise Halt(outcome.reason)
    raise TrialFailed(outcome.reason)


def _dataset(data: ImageFolderData) -> dict[str, Any]:
    """The data a study trains on, as MLflow records a dataset: name, source path, digest, split sizes."""
    fp = rec.fingerprint(data)
    profile = {**fp["images"], "classes": len(fp["classes"])}
    return {
        "name": Path(data.root).name,
        "source": str(data.root),
        "digest": fp["digest"],
        "profile": profile,
    }


def _open_run(ctx: Context, cfg: TrialConfig, absent: list[str]) -> RunLog:
    """The trial's MLflow run, tagged with its trial number from the start, then linked to the trial."""
    run = ctx.tracker.start(
        run_name=f"trial-{ctx.trial.number:04d}",
        params=cfg.flat(),
        tags={
            "study": ctx.spec.name,
            "trial_number": ctx.trial.number,
            "state": "RUNNING",
            "sweeper.searched": ",".join(sorted(ctx.spec.space)),
            "sweeper.absent": ",".join(absent) or "none",  # conditional dims whose condition failed
        },
    )
    faults.hit("setup-after-run")
    ctx.trial.set_user_attr(rec.MLFLOW_RUN, run.run_id)
    return run


def attempt(ctx: Context, job: Job, progress: Progress, num_classes: int) -> Outcome:
    """Count the costs, check the budget, then train; every way a trial can end comes back as an
    :class:`Outcome`."""
    try:
        over = _before_training(ctx, job.cfg, num_classes)
        if over is not None:
            return over
        trained = _train(ctx, job, _listener(ctx, progress))
    except optuna.TrialPruned as e:
        return Outcome("pruned", reason=str(e))
    except workers.Diverged as e:
        return Outcome("infeasible", value=worst_value(ctx.spec), reason=f"diverged: {e.reason}")
    except workers.WorkerLost as e:
        return Outcome("lost", reason=f"worker lost: {e}", kind="lost")
    except KeyboardInterrupt:
        return Outcome("interrupted", reason="interrupted (Ctrl-C or SIGTERM)", kind="interrupted")
    except workers.DiskFull as e:
        return Outcome("halted", reason=e.reason, kind="disk")
    except workers.BadData as e:  # not counted, re-queued: the sweep stops on the data's one line
        return Outcome("halted", reason=e.reason, kind="data")
    except stores.StoreDown as e:
        return Outcome("halted", reason=str(e), kind="store")
    except workers.TrialFailure as e:
        return Outcome("failed", reason=e.reason[:500], kind=e.kind, details=e.details)
    except Exception as e:  # a bug on this side of the process seam
        first = str(e).splitlines()[0] if str(e) else ""
        return Outcome(
            "failed",
            reason=f"{type(e).__name__}: {first}"[:500],
            kind="error",
            details=traceback.format_exc(),
        )
    measured = ctx.trial.user_attrs.get(objectives.MEASURED) or {}
    missing = [c for c, _ in ctx.spec.costs if c not in measured]
    if missing:  # never recorded as a made-up value: the front would be silently wrong
        return Outcome("failed", reason=f"trained, but {', '.join(missing)} was not measured", kind="error")
    return Outcome("complete", value=trained.best[ctx.spec.metric], trained=trained)


def _before_training(ctx: Context, cfg: TrialConfig, num_classes: int) -> Outcome | None:
    """The costs counted without weights (for a trade-off study), then the parameter budget."""
    counted = tuple(c for c, _ in ctx.spec.costs if c in ("num_params", "gmacs"))
    if counted:
        from sweeper.train import costs

        _measured(ctx, costs.counted(cfg, num_classes, counted))
    if ctx.spec.max_params is None:
        return None
    return check_budget(ctx.trial, cfg, num_classes, ctx.spec.max_params)


def _listener(ctx: Context, progress: Progress) -> Listener:
    """What the trial's messages do: restored epochs are recorded once and never pruned on; new epochs
    are recorded, shown and may prune (never a ``sweeper confirm`` re-run, whichever command runs it:
    its seeds are compared in pairs, all or none); a discarded checkpoint and measured costs are noted."""
    prunable = not ctx.spec.multi and CONFIRM not in ctx.trial.user_attrs  # Optuna prunes single objectives

    def restored(step: int, history: list[tuple[int, dict[str, float]]]) -> None:
        for e, metrics in history:
            if e <= step and e not in ctx.recorded:  # a retry of a lost trial: its new trial and run get them
                _record(ctx, e, metrics)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        faults.hit("epoch")
        _record(ctx, epoch, metrics)
        progress.epoch(ctx.trial.number, epoch, metrics)
        value = metrics[ctx.spec.metric]
        if prunable and ctx.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {ctx.spec.metric}={value:.4f}")

    def discarded(reason: str) -> None:
        ctx.trial.set_user_attr(rec.DISCARDED, reason)
        ctx.run.set_tags({rec.DISCARDED: reason})

    def working(work: Work) -> None:
        progress.working(ctx.trial.number, work)

    return Listener(report, restored, discarded, lambda measured: _measured(ctx, measured), working)


def _record(ctx: Context, epoch: int, metrics: dict[str, float]) -> None:
    ctx.recorded.add(epoch)
    ctx.run.log_metrics(epoch, metrics)
    value = metrics[ctx.spec.metric]
    if not ctx.spec.multi:
        ctx.trial.report(value, epoch)
    else:  # Trial.report takes one objective: keep the curve beside it (the ablation reads it)
        ctx.trial.set_user_attr(rec.CURVE, {**ctx.trial.user_attrs.get(rec.CURVE, {}), str(epoch): value})


def _timed(spec: Study) -> bool:
    return any(c == "latency_ms" for c, _ in spec.costs)


def _measured(ctx: Context, measured: dict[str, float]) -> None:
    """Costs measured before training: kept on the trial (one dict) and logged to its run."""
    before = ctx.trial.user_attrs.get(objectives.MEASURED) or {}
    ctx.trial.set_user_attr(objectives.MEASURED, {**before, **measured})
    ctx.run.log_metrics(0, measured)


def _values(ctx: Context, metric_value: float) -> float | list[float]:
    """What Optuna records: the metric alone, or the metric then each cost objective."""
    if not ctx.spec.multi:
        return metric_value
    measured = ctx.trial.user_attrs.get(objectives.MEASURED) or {}
    worst = {"minimize": float("inf"), "maximize": float("-inf")}
    return [metric_value, *(float(measured.get(c, worst[d])) for c, d in ctx.spec.costs)]


def finish(ctx: Context, outcome: Outcome) -> float | list[float]:
    """Write how the trial ended to Optuna, MLflow and the checkpoint folder; the one place that does.

    Optuna first (the count depends on it), then MLflow: a kill between the two leaves a finished trial
    with a RUNNING run, which the next run closes with the trial's state. Safe to call again for the
    same trial (a store that went away mid-way): the params are re-queued once.

    Returns the trial's value (complete, infeasible); otherwise raises what makes Optuna record the
    state: TrialPruned, TrialFailed (FAIL, counted or not as the attributes say), KeyboardInterrupt,
    Halt (FAIL, not counted; the sweep stops).
    """
    faults.hit("finish")
    t, run = ctx.trial, ctx.run
    note = _settle(ctx, outcome)
    if outcome.tags:
        run.set_tags(outcome.tags)
    if outcome.state == "complete":
        return _complete(ctx, outcome)
    t.set_constraint(rec.DIVERGED, 1.0 if outcome.state == "infeasible" else 0.0)
    if outcome.state == "pruned":
        t.set_user_attr(rec.PRUNE_REASON, outcome.reason)
        run.end("PRUNED", outcome.reason)
        raise optuna.TrialPruned(outcome.reason)
    if outcome.state == "infeasible":
        t.set_user_attr(rec.INFEASIBLE, outcome.reason)
        run.end("INFEASIBLE", outcome.reason)
        assert outcome.value is not None
        return _values(ctx, outcome.value)
    reason = outcome.reason + note
    t.set_user_attr(rec.FAIL_REASON, reason)
    t.set_user_attr(rec.FAIL_KIND, outcome.kind)
    if outcome.state == "lost":
        t.set_user_attr(rec.LOST, reason)
    if outcome.state in ("interrupted", "halted"):
        t.set_user_attr(rec.NOT_COUNTED, outcome.state)
    if outcome.details:
        with tracking.staging(ctx.spec.name) as d:  # the full traceback, for bugs; the console gets one line
            (d / "error.txt").write_text(outcome.details)
            run.log_dir(d)
    run.end("FAIL", reason)
    if outcome.state == "interrupted":
        raise KeyboardInterrupt
    if outcome.state == "halted":
        raise Halt(outcome.reason)
    raise TrialFailed(reason)


def _settle(ctx: Context, outcome: Outcome) -> str:
    """Keep the checkpoint and re-queue the params of a trial that did not end on its own (lost,
    interrupted, halted) while its retries last; otherwise drop the checkpoint. Returns what happened,
    as a note for the trial's reason. The params are queued once, however often this runs."""
    if outcome.state not in ("lost", "interrupted", "halted"):
        _drop(ctx.checkpoint)
        return ""
    frozen = _frozen(ctx.trial)
    if not stores.will_requeue(frozen):
        _drop(ctx.checkpoint)
        return f"; not re-queued: retry limit reached ({stores.MAX_RETRY} retries of trial {_origin(frozen)})"
    if not ctx.requeued:
        _requeue(ctx.trial.study, frozen)
        ctx.requeued = True
    return "; the params were re-queued"


def _complete(ctx: Context, outcome: Outcome) -> float | list[float]:
    trained, metric = outcome.trained, ctx.spec.metric
    assert trained is not None, "a complete outcome carries what the trial process trained"
    ctx.trial.set_constraint(rec.DIVERGED, 0.0)
    ctx.trial.set_user_attr(rec.BEST_EPOCH, trained.best_epoch)
    ctx.trial.set_user_attr("num_params", trained.num_params)
    ctx.run.log_dir(ctx.out)
    ctx.run.set_tags({"best_epoch": trained.best_epoch})
    ctx.run.log_metrics(trained.best_epoch, {f"best_{metric}": trained.best[metric]})
    ctx.run.end("COMPLETE")
    assert outcome.value is not None
    return _values(ctx, outcome.value)


def _train(ctx: Context, job: Job, listener: Listener) -> Trained:
    """Train in a fresh process; on out-of-memory, once more at half the micro-batch (recorded)."""

    def once(j: Job) -> Trained:
        trained = workers.train_in_process(j, listener)
        if trained.resumed_from:
            ctx.trial.set_user_attr(rec.RESUMED, trained.resumed_from)
            ctx.run.set_tags({rec.RESUMED: trained.resumed_from})
        return trained

    try:
        return once(job)
    except workers.OutOfMemory as e:
        smaller = workers.halve_micro_batch(job.cfg)
        if smaller is None:
            raise
        was = job.cfg.micro_batch or job.cfg.batch_size
        note = (
            f"out of memory at micro_batch {was}; retried at {smaller.micro_batch} with gradient "
            f"accumulation, batch_size {job.cfg.batch_size} unchanged"
        )
        ctx.trial.set_user_attr(rec.OOM_RETRY, note)
        ctx.run.set_tags({rec.OOM_RETRY: note, "micro_batch_used": smaller.micro_batch})
        try:
            return once(dataclasses.replace(job, cfg=smaller))
        except workers.OutOfMemory as again:
            raise workers.OutOfMemory(
                f"{again.reason} (also at micro_batch {smaller.micro_batch})", again.details
            ) from e


def check_budget(trial: optuna.Trial, cfg: TrialConfig, num_classes: int, max_params: int) -> Outcome | None:
    """The parameter budget, checked before any training: a config over it is recorded and never trained.

    The relative excess is set as an Optuna constraint on every trial (feasible when <= 0), so TPE and
    the GP sampler learn to avoid over-budget regions; an over-budget trial ends PRUNED with its reason.
    """
    from sweeper.train import model as model_lib

    n = model_lib.count_params_for(cfg, num_classes)
    trial.set_user_attr("num_params", n)
    trial.set_constraint("max_params", n / max_params - 1.0)
    if n <= max_params:
        return None
    reason = (
        f"not trained: {cfg.backbone} with a {cfg.head} head has {n / 1e6:.1f}M parameters, "
        f"over the study's budget of {max_params / 1e6:.1f}M (constraints.max_params)"
    )
    return Outcome("pruned", reason=reason, tags={"num_params": n})


def worst_value(spec: Study) -> float:
    """The value a diverged trial is recorded with: the worst the metric can be."""
    if spec.metric == "val_acc":
        return 0.0 if spec.direction == "maximize" else 1.0
    return float("inf") if spec.direction == "minimize" else float("-inf")


def checkpoint_dir(study: str) -> Path:
    """Where a study's epoch checkpoints live (``$SWEEPER_CHECKPOINTS``, default ``./checkpoints``)."""
    return (Path(os.environ.get("SWEEPER_CHECKPOINTS") or "checkpoints") / study).resolve()


def checkpoint_path(spec: Study, trial: FrozenTrial) -> Path:
    """A trial's epoch checkpoint, named after the first trial of its retry chain so that a retry on any
    worker sharing the folder resumes it."""
    return checkpoint_dir(spec.name) / f"trial-{_origin(trial):04d}.pt"


def stale_temporaries(study: str) -> list[Path]:
    """Temporary checkpoint files (``.trial-NNNN.pt.PID.tmp``) whose writer is gone (killed mid-write)."""
    folder = checkpoint_dir(study)
    out = []
    for f in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
        pid = f.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            out.append(f)
    return out


def _origin(trial: FrozenTrial) -> int:
    return int(trial.system_attrs.get("failed_trial", trial.number))


def _drop(checkpoint: Path) -> None:
    """A finished trial's checkpoint. The study's folder stays, even empty: another worker may have just
    made it for its next save (removing it cost CI a trial)."""
    if checkpoint.name:
        checkpoint.unlink(missing_ok=True)


def _frozen(trial: optuna.Trial) -> FrozenTrial:
    return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)


def _requeue(study: optuna.Study, frozen: FrozenTrial) -> None:
    """Queue a trial's params again, the way Optuna retries a stale trial; the notes stay on the trial,
    what the trial is (a confirmation re-run, a design row) goes with its params."""
    frozen = copy.copy(frozen)
    frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k in (CONFIRM, DESIGN_ROW)}
    stores.RETRY(study, frozen)


# ---- trials whose worker died ---------------------------------------------------------------------


def mark_lost(storage: optuna.storages.BaseStorage, trial_id: int, how: str) -> None:
    """Record why a RUNNING trial is about to be failed as lost (before: a finished trial is frozen)."""
    worker = storage.get_trial(trial_id).user_attrs.get(rec.WORKER, "?")
    reason = f"worker lost ({worker}): {how}"
    storage.set_trial_user_attr(trial_id, rec.FAIL_REASON, reason)
    storage.set_trial_user_attr(trial_id, rec.FAIL_KIND, "lost")
    storage.set_trial_user_attr(trial_id, rec.LOST, reason)


def close_lost(study: optuna.Study, frozen: FrozenTrial, tracker: Tracker | None) -> None:
    """After a lost trial was failed (by this process, once): re-queue its params while its retries
    last, else drop its checkpoint; close its MLflow run, or record one when it died before creating it."""
    if stores.will_requeue(frozen):
        _requeue(study, frozen)
        note = "; the params were re-queued"
    else:
        _drop(checkpoint_dir(study.study_name) / f"trial-{_origin(frozen):04d}.pt")
        note = f"; not re-queued: retry limit reached ({stores.MAX_RETRY} retries)"
    if tracker is None:
        return
    reason = frozen.user_attrs.get(rec.FAIL_REASON) or "worker lost: its heartbeat stopped"
    run_id = frozen.user_attrs.get(rec.MLFLOW_RUN) or _tagged_run(tracker, frozen.number)
    if run_id:
        tracker.close_run(run_id, "FAIL", reason + note)
        return
    run = tracker.start(
        run_name=f"trial-{frozen.number:04d}",
        params=frozen.params,
        tags={"study": study.study_name, "trial_number": frozen.number, "state": "RUNNING"},
    )
    run.end("FAIL", reason + note + " (its worker died before creating this run)")


def _tagged_run(tracker: Tracker, number: int) -> str | None:
    for r in tracker.trial_runs():
        if r.data.tags.get("trial_number") == str(number):
            return str(r.info.run_id)
    return None
