"""A study's invariants as code: what any sweep, however it ended, must leave in Optuna and MLflow.

- no trial or run RUNNING without a live worker, and no study run RUNNING without a live sweep;
- one MLflow run per trial that ran (surplus trials never do), one trial per run, states matching;
- no params sweeper queued (a start, a design run, a retry) trained and counted twice, and no chain
  retried more than the documented retries;
- no checkpoint of a finished trial, no half-written checkpoint, no staging folder of a dead process.

:func:`examine` lists the violations as :class:`Finding` values; each safe repair is attached
(``fix``), and ``sweeper doctor --repair`` runs them. The fault suite asserts an empty list.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import SweeperError
from sweeper.store import record as rec
from sweeper.store import stores, tracking
from sweeper.store.tracking import STATUS, MlflowTracker
from sweeper.sweep import trial as trial_lib

if TYPE_CHECKING:
    from mlflow.entities import Run

Kind = Literal[
    "running", "no-run", "orphan-run", "mismatch", "duplicate", "retries", "checkpoint", "staging", "dead-run"
]


@dataclass(frozen=True)
class Finding:
    """One violation: its kind, what it concerns, and the safe repair (None: it needs a person)."""

    kind: Kind
    subject: str
    detail: str
    fix: Callable[[], None] | None = None

    def line(self) -> str:
        return f"{self.kind}: {self.subject}: {self.detail}" + ("" if self.fix else " (not repairable)")


def examine(study: optuna.Study, tracker: MlflowTracker, live: bool) -> list[Finding]:
    """Every violation of the study's invariants.

    Args:
        live: whether a sweep may be running now; then only trials with a stale heartbeat count as
            dead. False when this process holds the single-writer lock of a local store.
    """
    trials = study.get_trials(deepcopy=False)
    dead = _dead(study, trials, live)
    runs = tracker.trial_runs()
    out = _running(study, tracker, trials, dead)
    out += _pairs(study, tracker, trials, runs, dead)
    out += _duplicates(trials)
    out += _files(study.study_name, trials, dead)
    out += _dead_runs(tracker)
    out += _abandoned_study_run(tracker)
    return out


def _abandoned_study_run(tracker: MlflowTracker) -> list[Finding]:
    """The study run left RUNNING by a killed sweep (a live sweep keeps it RUNNING: not a finding)."""
    run = tracker.abandoned_study_run()
    if run is None:
        return []
    why = "its sweep ended without closing it (killed)"
    fix = functools.partial(tracker.close_study_run, run.info.run_id, why + "; closed by `sweeper doctor`")
    return [Finding("dead-run", f"study run {run.info.run_id}", f"RUNNING, but {why}", fix)]


def _dead_runs(tracker: MlflowTracker) -> list[Finding]:
    """Refit and ensemble runs left RUNNING by a killed ``refit-best`` (no trial accounts for them)."""
    out = []
    for r in tracker.dead_runs():
        kind = r.data.tags.get(tracking.KIND, "?")
        why = f"its process ({r.data.tags[tracking.PROCESS]}) ended without closing it (killed)"
        fix = functools.partial(tracker.end_run, r.info.run_id, "FAIL", why + "; closed by `sweeper doctor`")
        out.append(Finding("dead-run", f"{kind} run {r.info.run_id}", f"RUNNING, but {why}", fix))
    return out


def _dead(study: optuna.Study, trials: list[FrozenTrial], live: bool) -> set[int]:
    """Numbers of RUNNING trials whose worker is gone."""
    running = {t.number for t in trials if t.state == TrialState.RUNNING}
    if not live:
        return running
    stale_ids = set(study._storage._get_stale_trial_ids(study._study_id))  # type: ignore[attr-defined]
    return {t.number for t in trials if t._trial_id in stale_ids}


def _running(
    study: optuna.Study, tracker: MlflowTracker, trials: list[FrozenTrial], dead: set[int]
) -> list[Finding]:
    out = []
    for t in trials:
        if t.number in dead:
            out.append(
                Finding(
                    "running",
                    f"trial {t.number}",
                    "RUNNING with no live worker",
                    functools.partial(_close_dead, study, tracker, t),
                )
            )
    return out


def _close_dead(study: optuna.Study, tracker: MlflowTracker, t: FrozenTrial) -> None:
    trial_lib.mark_lost(study._storage, t._trial_id, "found RUNNING by `sweeper doctor` (its process died)")
    study.tell(t.number, state=TrialState.FAIL)
    trial_lib.close_lost(study, study._storage.get_trial(t._trial_id), tracker)


def _pairs(
    study: optuna.Study, tracker: MlflowTracker, trials: list[FrozenTrial], runs: list[Any], dead: set[int]
) -> list[Finding]:
    """Trials without runs, runs without trials (or second runs of one), and states that disagree."""
    by_number = {t.number: t for t in trials}
    linked: dict[int, Any] = {}
    out = []
    for r in runs:
        number = int(r.data.tags["trial_number"])
        t = by_number.get(number)
        if t is None or t.user_attrs.get(rec.MLFLOW_RUN, r.info.run_id) != r.info.run_id or number in linked:
            why = "no such trial" if t is None else f"trial {number} has another run"
            detail = f"tagged trial {number}: {why}"
            out.append(
                Finding(
                    "orphan-run", f"run {r.info.run_id}", detail, functools.partial(_drop_run, tracker, r)
                )
            )
            continue
        linked[number] = r
        out += _mismatch(tracker, t, r, dead)
    for t in trials:
        if t.number not in linked and _ran(t) and t.state != TrialState.RUNNING:
            detail = f"{t.state.name} with no MLflow run"
            fix = functools.partial(_record_run, study, tracker, t)
            out.append(Finding("no-run", f"trial {t.number}", detail, fix))
    return out


def _ran(t: FrozenTrial) -> bool:
    """Whether a trial got as far as its run: every started trial but surplus and queued ones."""
    surplus = str(t.user_attrs.get(rec.NOT_COUNTED, "")).startswith("surplus")
    return t.state != TrialState.WAITING and not surplus


def _mismatch(tracker: MlflowTracker, t: FrozenTrial, r: Run, dead: set[int]) -> list[Finding]:
    if t.state == TrialState.RUNNING:
        if r.info.status == "RUNNING" or t.number in dead:
            return []
        detail = f"trial RUNNING, run {r.info.status}"
        return [Finding("mismatch", f"trial {t.number}", detail)]
    want = rec.run_state(t)
    have = (r.info.status, r.data.tags.get("state"))
    if have == (STATUS[want], want):
        return []
    reason = str(t.user_attrs.get(rec.FAIL_REASON) or t.user_attrs.get(rec.PRUNE_REASON) or "")
    what = "RUNNING" if have[0] == "RUNNING" else "mismatch"
    return [
        Finding(
            "running" if what == "RUNNING" else "mismatch",
            f"run {r.info.run_id} (trial {t.number})",
            f"trial {want}, run {have[0]} (state tag {have[1]})",
            functools.partial(tracker.end_run, r.info.run_id, want, reason or "closed by `sweeper doctor`"),
        )
    ]


def _drop_run(tracker: MlflowTracker, r: Run) -> None:
    if r.info.status == "RUNNING":
        tracker.end_run(r.info.run_id, "FAIL", "no trial links this run; closed by `sweeper doctor`")
    tracker.delete_run(r.info.run_id)


def _record_run(study: optuna.Study, tracker: MlflowTracker, t: FrozenTrial) -> None:
    run = tracker.start(
        run_name=f"trial-{t.number:04d}",
        params=t.params,
        tags={"study": study.study_name, "trial_number": t.number, "state": "RUNNING"},
    )
    why = str(t.user_attrs.get(rec.FAIL_REASON) or "its worker died before creating this run")
    run.end(rec.run_state(t), f"{why} (recorded by `sweeper doctor`)")


def _duplicates(trials: list[FrozenTrial]) -> list[Finding]:
    """Params that sweeper queued (an enqueued start, a design run, a retry) counted a second time, and
    retry chains longer than the documented retries. A sampler may propose params again (a small
    discrete space, the random sampler): that is its choice, not a double count, and is not reported."""
    seen: dict[str, int] = {}
    out = []
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    for t in trials:
        counted = t.state.is_finished() and not t.user_attrs.get(rec.NOT_COUNTED) and t.number not in retried
        if not counted or not t.params:
            continue
        key = json.dumps(t.params, sort_keys=True, default=str)
        queued = "fixed_params" in t.system_attrs or "failed_trial" in t.system_attrs
        if key in seen and queued:
            detail = f"the same params as trial {seen[key]}, both counted"
            out.append(Finding("duplicate", f"trial {t.number}", detail))
        seen.setdefault(key, t.number)
        if len(t.system_attrs.get("retry_history", [])) > stores.MAX_RETRY:
            detail = f"retried more than {stores.MAX_RETRY} times"
            out.append(Finding("retries", f"trial {t.number}", detail))
    return out


def _files(study: str, trials: list[FrozenTrial], dead: set[int]) -> list[Finding]:
    """Checkpoints no trial will resume, half-written checkpoints, staging folders of dead processes."""
    pending = {
        int(t.system_attrs.get("failed_trial", t.number))
        for t in trials
        if t.state == TrialState.WAITING or (t.state == TrialState.RUNNING and t.number not in dead)
    }
    waiting = {  # a dead RUNNING trial is re-queued by its repair: its checkpoint stays
        int(t.system_attrs.get("failed_trial", t.number)) for t in trials if t.number in dead
    }
    out = []
    folder = trial_lib.checkpoint_dir(study)
    for f in sorted(folder.glob("trial-*.pt")) if folder.is_dir() else []:
        origin = int(f.stem.split("-")[1])
        if origin not in pending | waiting:
            out.append(
                Finding("checkpoint", str(f), "no trial will resume it", functools.partial(_unlink, f))
            )
    for f in trial_lib.stale_temporaries(study):
        detail = "half-written by a dead process"
        out.append(Finding("checkpoint", str(f), detail, functools.partial(_unlink, f)))
    for d in tracking.stale_staging(study):
        fix = functools.partial(shutil.rmtree, d, ignore_errors=True)
        out.append(Finding("staging", str(d), "staging folder of a dead process", fix))
    return out


def _unlink(f: Path) -> None:
    f.unlink(missing_ok=True)
    if f.parent.is_dir() and not any(f.parent.iterdir()):
        f.parent.rmdir()


def check(
    name: str, storage_url: str | None, tracking_uri: str | None, repair: bool
) -> tuple[list[str], int]:
    """``sweeper doctor``: the report as lines (with ``repair``, what was fixed first), and how many
    problems remain.

    Local SQLite stores are locked for the check (:func:`stores.single_writer`): then no sweep runs, and
    every RUNNING trial is dead. When a sweep holds them, or they are read-only (no lock file can be made
    beside them), only stale heartbeats count, and no repair runs. Nothing is created: a missing study or
    local MLflow store is one line.
    """
    url = stores.resolve_storage(storage_url)
    study = stores.load_existing(name, url)
    mlflow_db = stores.sqlite_path(tracking.resolve_uri(tracking_uri))
    if mlflow_db is not None and not mlflow_db.is_file():
        raise SweeperError(
            f"no MLflow store at {mlflow_db}: pass the --tracking-uri that study {name} ran with"
        )
    tracker = tracking.MlflowTracker(tracking_uri, name)
    with contextlib.ExitStack() as stack:
        busy = _lock([url, tracker.uri], stack)
        if busy is None:
            return _check(study, tracker, live=stores.sqlite_path(url) is None, repair=repair)
        lines, left = _check(study, tracker, live=True, repair=False)
    return [*lines, busy] if repair else lines, left


def _lock(urls: list[str], stack: contextlib.ExitStack) -> str | None:
    """Hold the local stores' writer lock in ``stack``: None when held, else why no repair can run."""
    try:
        stack.enter_context(stores.single_writer(urls))
    except stores.StoreDown:
        raise
    except SweeperError as e:
        if "being written by another sweep" not in str(e):
            raise
        return "a sweep is writing this study now: repairs wait until it ends"
    except OSError as e:  # a read-only folder: no lock file beside the database, and no repair either
        return f"{Path(e.filename or '').parent} is read-only ({e.strerror}): nothing repaired"
    return None


def _check(study: optuna.Study, tracker: MlflowTracker, live: bool, repair: bool) -> tuple[list[str], int]:
    found = examine(study, tracker, live)
    lines = []
    if repair:
        for f in found:
            if f.fix is not None:
                f.fix()
                lines.append(f"repaired {f.line()}")
        found = examine(study, tracker, live)
    return lines + [f.line() for f in found], len(found)
