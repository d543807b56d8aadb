"""One sweep on this machine, as both ``run-study`` and ``confirm`` run it: a worker per slot, each
trial's end shown, the study's metrics logged and the weights outside the kept best deleted.

The CLI decides what to run (the study, its data, the stores, the slots) and how to show it; this
module is the one place that turns that into workers and an end-of-trial routine, so every command
that trains a study's trials keeps the same promises about what it records.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from sweeper.data.images import ImageFolderData
from sweeper.store import record as record_lib
from sweeper.store.tracking import Tracker
from sweeper.study.spec import Study
from sweeper.sweep import loop, retention
from sweeper.sweep import trial as trial_lib
from sweeper.sweep.progress import Progress


@dataclass(frozen=True)
class Session:
    """What a sweep runs on: the study (as it runs, overrides applied), its data and stores, the
    live progress, and one entry per worker (its ``CUDA_VISIBLE_DEVICES``, None on the CPU)."""

    spec: Study
    data: ImageFolderData
    storage: str | None
    tracker: Tracker
    progress: Progress
    slots: list[str | None]
    threads: int | None = None  # torch CPU threads per trial process when several share the cores


def run(
    session: Session,
    trials: int,
    timeout: float | None = None,
    record: record_lib.StudyRecord | None = None,
    prepare: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Run the study until it holds ``trials`` counted trials (see :func:`sweeper.sweep.loop.run`)."""
    s = session
    objectives = [
        trial_lib.make_objective(s.spec, s.data, s.tracker, s.progress, gpu=g, slot=i, threads=s.threads)
        for i, g in enumerate(s.slots)
    ]
    return loop.run(
        s.spec, trials, objectives, s.storage, timeout, 0, _on_trial_end(s), s.tracker, record, prepare
    )


def _on_trial_end(s: Session) -> Callable[[optuna.Study, FrozenTrial], None]:
    """What each finished trial updates: progress, kept weights, the study run's metrics. One worker at a
    time: two trials ending together would otherwise log their counts out of order (3 after 4)."""
    spec = s.spec
    one_at_a_time = threading.Lock()

    def on_trial_end(st: optuna.Study, t: FrozenTrial) -> None:
        with one_at_a_time:
            _trial_ended(st, t)

    def _trial_ended(st: optuna.Study, t: FrozenTrial) -> None:
        counts = record_lib.counts(st.get_trials(deepcopy=False))
        best = best_value(st)
        s.progress.trial_finished(
            t.number, t.state.name, record_lib.primary(t), record_lib.why(t), counts, best
        )
        study_metrics = {f"trials_{k}": float(counts[k]) for k in ("complete", "pruned", "fail")}
        if spec.multi:
            study_metrics["pareto_front"] = float(len(record_lib.pareto_front(st, spec.objectives)))
        retention.prune_weights(st, s.tracker, spec.keep_weights, spec.direction, spec.objectives)
        s.tracker.log_study_metrics(
            counts["counted"], study_metrics | ({} if best is None else {f"best_{spec.metric}": best})
        )

    return on_trial_end


def log_view(spec: Study, tracker: Tracker) -> None:
    """The study's metrics and searched params as the MLflow runs table's columns, best first."""
    metrics = [m for m, _ in spec.objectives]
    tracker.log_view(metrics, list(spec.space), ascending=spec.objectives[0][1] == "minimize")


def best_value(st: optuna.Study) -> float | None:
    """The best value of the metric (a multi-objective study's first objective) among own trials."""
    values = [record_lib.primary(t) or 0.0 for t in record_lib.own_complete(st)]
    pick = max if st.directions[0].name == "MAXIMIZE" else min
    return pick(values, default=None)
