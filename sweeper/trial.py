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
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial

from sweeper import record as rec
from sweeper import space as space_lib
from sweeper import stores
from sweeper.progress import Progress
from sweeper.spec import Study

Objective = Callable[[optuna.Trial], float]
State = Literal["complete", "pruned", "infeasible", "failed", "lost", "interrupted"]


@dataclass(frozen=True)
class Outcome:
    """How one trial ended. ``value`` for complete and infeasible trials; ``details`` a traceback."""

    state: State
    value: float | None = None
    reason: str = ""
    kind: str = ""  # failed: oom / error
    details: str = ""
    trained: Any = None  # workers.Trained of a complete trial
    tags: dict[str, Any] = field(default_factory=dict)  # extra MLflow tags


class TrialFailed(Exception):
    """Raised to Optuna after :func:`finish` so that it records the trial FAIL (its reason is recorded)."""


@dataclass
class Context:
    """What :func:`finish` writes to: the Optuna trial, its MLflow run, its checkpoint and staging folder."""

    spec: Study
    trial: optuna.Trial
    run: Any  # tracking.TrialRun
    checkpoint: Path
    out: Path  # the trial process's artifact folder
    tracker: Any
    recorded: set[int] = field(default_factory=set)  # epochs reported to Optuna and MLflow


def make_objective(
    spec: Study,
    data: Any,
    tracker: Any,
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
    from sweeper import workers

    progress = progress or Progress(0, spec.epochs, spec.metric)

    def objective(trial: optuna.Trial) -> float:
        progress.trial_started(trial.number)
        params = space_lib.suggest(trial, spec.space)
        cfg = spec.resolve(params)
        absent = space_lib.absent(spec.space, params)  # conditional, condition false: the default holds
        trial.set_user_attr(rec.CONFIG, rec.config_json(cfg))
        trial.set_user_attr(rec.WORKER, workers.worker_name(slot, gpu))
        run = tracker.start(
            run_name=f"trial-{trial.number:04d}",
            params=cfg.flat(),
            tags={
                "study": spec.name,
                "trial_number": trial.number,
                "state": "RUNNING",
                "sweeper.searched": ",".join(sorted(spec.space)),
                "sweeper.absent": ",".join(absent) or "none",
            },
        )
        trial.set_user_attr(rec.MLFLOW_RUN, run.run_id)
        with tracker.staging() as out:
            ctx = Context(spec, trial, run, checkpoint_path(spec, _frozen(trial)), out, tracker)
            job = workers.Job(cfg, data, spec.metric, out, ctx.checkpoint, gpu, threads)
            return finish(ctx, attempt(ctx, job, progress, len(data.classes)))

    return objective


def attempt(ctx: Context, job: Any, progress: Progress, num_classes: int) -> Outcome:
    """Check the budget, then train; every way a trial can end comes back as an :class:`Outcome`."""
    from sweeper import workers

    if ctx.spec.max_params is not None:
        over = check_budget(ctx.trial, job.cfg, num_classes, ctx.spec.max_params)
        if over is not None:
            return over
    try:
        trained = _train(ctx, job, _reporter(ctx, progress))
    except optuna.TrialPruned as e:
        return Outcome("pruned", reason=str(e))
    except workers.Diverged as e:
        return Outcome("infeasible", value=worst_value(ctx.spec), reason=f"diverged: {e.reason}")
    except workers.WorkerLost as e:
        return Outcome("lost", reason=f"worker lost: {e}", kind="lost")
    except KeyboardInterrupt:
        return Outcome("interrupted", reason="interrupted (Ctrl-C or SIGTERM)", kind="interrupted")
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
    return Outcome("complete", value=trained.best[ctx.spec.metric], trained=trained)


def _reporter(ctx: Context, progress: Progress) -> Any:
    """The trial process's two messages: restored epochs (recorded once, never pruned on) and new ones."""

    def restored(step: int, history: list[tuple[int, dict[str, float]]]) -> None:
        for e, metrics in history:
            if e <= step and e not in ctx.recorded:  # a retry of a lost trial: its new trial and run get them
                _record(ctx, e, metrics)

    def report(epoch: int, metrics: dict[str, float]) -> None:
        _record(ctx, epoch, metrics)
        progress.epoch(ctx.trial.number, epoch, metrics)
        value = metrics[ctx.spec.metric]
        if ctx.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {ctx.spec.metric}={value:.4f}")

    report.restored = restored  # type: ignore[attr-defined]
    return report


def _record(ctx: Context, epoch: int, metrics: dict[str, float]) -> None:
    ctx.recorded.add(epoch)
    ctx.run.log_metrics(epoch, metrics)
    ctx.trial.report(metrics[ctx.spec.metric], epoch)


def finish(ctx: Context, outcome: Outcome) -> float:
    """Write how the trial ended to Optuna, MLflow and the checkpoint folder; the one place that does.

    Returns the trial's value (complete, infeasible); otherwise raises what makes Optuna record the
    state: TrialPruned, TrialFailed (FAIL, counted or not as the attributes say), KeyboardInterrupt.
    """
    t, run = ctx.trial, ctx.run
    keep = outcome.state in ("lost", "interrupted")  # the retry resumes from the checkpoint
    if keep:
        _requeue(t)
    else:
        _drop(ctx.checkpoint)
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
        return outcome.value
    t.set_user_attr(rec.FAIL_REASON, outcome.reason)
    t.set_user_attr(rec.FAIL_KIND, outcome.kind)
    if outcome.state == "lost":
        t.set_user_attr(rec.LOST, outcome.reason)
    if outcome.state == "interrupted":
        t.set_user_attr(rec.NOT_COUNTED, "interrupted")
    if outcome.details:
        with ctx.tracker.staging() as d:  # the full traceback, for bugs; the console gets one line
            (d / "error.txt").write_text(outcome.details)
            run.log_dir(d)
    run.end("FAIL", outcome.reason + ("; the params were re-queued" if keep else ""))
    if outcome.state == "interrupted":
        raise KeyboardInterrupt
    raise TrialFailed(outcome.reason)


def _complete(ctx: Context, outcome: Outcome) -> float:
    trained, metric = outcome.trained, ctx.spec.metric
    ctx.trial.set_constraint(rec.DIVERGED, 0.0)
    ctx.trial.set_user_attr(rec.BEST_EPOCH, trained.best_epoch)
    ctx.trial.set_user_attr("num_params", trained.num_params)
    ctx.run.log_dir(ctx.out)
    ctx.run.set_tags({"best_epoch": trained.best_epoch})
    ctx.run.log_metrics(trained.best_epoch, {f"best_{metric}": trained.best[metric]})
    ctx.run.end("COMPLETE")
    assert outcome.value is not None
    return outcome.value


def _train(ctx: Context, job: Any, report: Any) -> Any:
    """Train in a fresh process; on out-of-memory, once more at half the micro-batch (recorded)."""
    from sweeper import workers

    def once(j: Any) -> Any:
        trained = workers.train_in_process(j, report, report.restored)
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


def check_budget(trial: optuna.Trial, cfg: Any, num_classes: int, max_params: int) -> Outcome | None:
    """The parameter budget, checked before any training: a config over it is recorded and never trained.

    The relative excess is set as an Optuna constraint on every trial (feasible when <= 0), so TPE and
    the GP sampler learn to avoid over-budget regions; an over-budget trial ends PRUNED with its reason.
    """
    from sweeper import model as model_lib

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
    stores.RETRY(trial.study, frozen)
