"""Which trials keep their weights in MLflow: the study's ``keep_weights`` best complete trials (and every
refit and ensemble, which are models of their own). The others' weight files are deleted from their runs
when they leave the top, so a 40-trial sweep of a large backbone does not keep 40 copies; their metrics,
curves, confusion matrices and configs stay.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from sweeper.store import record as record_lib
from sweeper.store.tracking import Tracker

TAG = "sweeper.weights"  # run tag: "deleted: ..." once a run's weight files are gone
WEIGHTS = (".safetensors",)


def prune_weights(
    study: optuna.Study,
    tracker: Tracker | None,
    keep: int | None,
    direction: str,
    objectives: list[tuple[str, str]] | None = None,
) -> list[int]:
    """Delete the weight files of complete trials outside the best ``keep`` (and, for a multi-objective
    study, off its Pareto front: any of those may be the one picked); returns the trials pruned now."""
    if keep is None or tracker is None:
        return []
    done = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    try:
        top = {t.number for t in record_lib.top_trials(study, keep, direction)}
    except Exception:  # no complete trial yet
        return []
    why = f"not among the {keep} best (keep_weights)"
    if objectives and len(objectives) > 1:
        top |= {t.number for t in record_lib.pareto_front(study, objectives)}
        why = f"not among the {keep} best (keep_weights) nor on the Pareto front"
    pruned = []
    for t in done:
        run_id = t.user_attrs.get(record_lib.MLFLOW_RUN)
        if t.number in top or not run_id or record_lib.borrowed(t):
            continue
        if tracker.delete_artifacts(run_id, WEIGHTS, f"deleted: {why}"):
            pruned.append(t.number)
    return pruned
