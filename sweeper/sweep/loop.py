"""The sweep loop: samplers, pruners, exactly N counted trials across workers, failure streaks, lost trials.

``--trials N`` is the study's total: re-running the same command after an interruption finishes the
study instead of adding N more. Only complete and pruned trials count towards N: a failed trial, one
interrupted or lost with its worker (and re-queued), or surplus from a race between workers does not.
Failures stop the sweep when the same error repeats 3 times in a row, or after 2N (at least 10) failures
in one run.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Literal

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import SweeperError
from sweeper.store import record as record_lib
from sweeper.store import stores, tracking
from sweeper.store.record import FAIL_REASON, LOST, NOT_COUNTED, counts
from sweeper.store.tracking import Tracker
from sweeper.study import design as design_lib
from sweeper.study import space as space_lib
from sweeper.study import starts
from sweeper.study.spec import Study
from sweeper.sweep import trial as trial_lib

warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats and retries are what we want

SAME_ERROR_LIMIT = 3  # this many identical failures in a row stop the sweep

Objective = Callable[[optuna.Trial], "float | list[float]"]


def sampler_seed(seed: int, worker: int, existing: int, process: int = 0) -> int:
    """The study's seed for a fresh single worker; a distinct, reproducible one for every other worker,
    every resumed run (``existing`` trials in storage) and every process sharing a server storage
    (``process``: its identity), so no two samplers of a study ever draw the same sequence."""
    if worker == 0 and existing == 0 and process == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, process, worker, existing]).generate_state(1)[0])


def build_sampler(
    spec: Study, worker: int = 0, existing: int = 0, process: int = 0
) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per worker, resume and process (see :func:`sampler_seed`)."""
    args = {k: v for k, v in spec.sampler.items() if k != "name"}
    if "seed" in args and args["seed"] is not None:
        args["seed"] = sampler_seed(int(args["seed"]), worker, existing, process)
    name = spec.sampler["name"]
    factories: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "grid": lambda **kw: optuna.samplers.GridSampler(space_lib.grid(spec.space), **kw),
    }
    cls = factories[name]
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
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
    spec: Study,
    storage_url: str | None,
    worker: int = 0,
    store: optuna.storages.BaseStorage | None = None,
    process: int = 0,
) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # sweeper prints one line per trial
    study = optuna.create_study(
        study_name=spec.name,
        storage=store or stores.storage(storage_url),
        sampler=build_sampler(spec, worker, 0, process),
        pruner=build_pruner(spec),
        directions=[d for _, d in spec.objectives],  # type: ignore[misc]  # checked by the parser
        load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != [d for _, d in spec.objectives]:  # create_study keeps a stored study's own directions
        raise SweeperError(
            f"study {spec.name!r} in storage has {len(stored)} objective(s) ({', '.join(stored)}); the study "
            f"file now has {', '.join(f'{d} {m}' for m, d in spec.objectives)}: run it under a new name "
            "with --name NEW"
        )
    names = [m for m, _ in spec.objectives]
    if study.metric_names != names:  # optuna-dashboard and plots name the objectives, not "Objective 0"
        study.set_metric_names(names)
    existing = len(study.get_trials(deepcopy=False))
    if existing:  # a resumed study: don't replay the first run's random draws
        study.sampler = build_sampler(spec, worker, existing, process)
    return study


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
    tracker: Tracker | None = None,
    record: record_lib.StudyRecord | None = None,
    prepare: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``trials`` counted trials, with one worker per objective.

    Workers are threads of this process, each with its own sampler seed; the training runs in a child
    process per trial (see :mod:`sweeper.sweep.workers`). Every process on every machine runs the same loop
    against the same storage and agrees on the count: a worker stops when the study has its trials,
    and waits while the last ones run elsewhere, so that a trial whose worker dies (its heartbeat goes
    stale) is re-queued and finished here. The same error in several trials in a row stops the sweep.

    Args:
        objective: one per worker (each bound to its GPU); a single callable means one worker.
        worker: index of the first worker's sampler seed offset.
        tracker: the MLflow tracker: runs of trials whose worker died are closed through it.
        record: what defines this study; kept with a new study, checked against an existing one's.
        prepare: called once with the opened study before any trial (a warm start adds trials here).

    Raises:
        KeyboardInterrupt: after Ctrl-C (or SIGTERM) every worker has closed its trial.
        SweeperError: the run would change what the study's trials mean, a store cannot be opened,
            another process writes the local SQLite files, or the same error failed several trials in a row.
    """
    objectives: list[Objective] = [objective] if callable(objective) else list(objective)
    url = stores.resolve_storage(storage_url)
    local = stores.sqlite_path(url) is not None
    lost = _Lost(tracker)
    with stores.single_writer([url, getattr(tracker, "uri", "") or ""]):
        _remove_leftovers(spec.name)
        store = stores.storage(url, on_stale=lost, mark_stale=_mark_stale)
        process = 0 if local else _process_seed_offset()
        studies = _open_workers(spec, store, worker, len(objectives), record, process, prepare)
        study = studies[0]
        if local:  # this process holds the only write lock: a RUNNING trial's worker is dead
            _fail_orphans(study, lost)
        _close_lost_runs(study, tracker)
        if spec.design is not None:  # queued once: a resumed run and the other workers find them queued
            design_lib.enqueue(study, spec.design, spec.space, trials)
        deadline = None if timeout is None else time.monotonic() + timeout
        crew = _Crew(trials, deadline, on_trial_end, design=spec.design is not None)
        try:
            crew.run(studies, objectives)
        finally:
            _close_lost_runs(study, tracker)
    return study


class _Crew:
    """The workers of this process: threads that share the count, the failure streak and the stop signals."""

    def __init__(
        self,
        trials: int,
        deadline: float | None,
        on_trial_end: Callable[[optuna.Study, FrozenTrial], None] | None,
        design: bool = False,
    ) -> None:
        self.trials, self.deadline = trials, deadline
        self.design = design  # a failed design run is queued again, never replaced by a sampled trial
        self.queue_lock = threading.Lock()
        self.streak = _Streak(SAME_ERROR_LIMIT, total=trials)
        self.ended = threading.Event()  # a trial ended here: a waiting worker looks again at once
        self.halt = threading.Event()
        self.errors: list[BaseException] = []
        self.callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
            self.streak,
            lambda st, t: self.ended.set(),
        ]
        if on_trial_end is not None:
            self.callbacks.append(on_trial_end)

    def run(self, studies: list[optuna.Study], objectives: list[Objective]) -> None:
        """One thread per worker until the study has its trials; Ctrl-C stops every worker's trial first."""
        from sweeper.sweep import workers

        workers.INTERRUPTED.clear()
        workers.start_fork_server()  # it imports torch while the workers set up their first trials
        done = [threading.Event() for _ in objectives]

        def serve(i: int) -> None:
            try:
                _work(studies[i], objectives[i], self)
            finally:
                done[i].set()
                self.ended.set()

        for i in range(len(objectives)):
            threading.Thread(target=serve, args=(i,), name=f"sweeper-worker-{i}", daemon=True).start()
        # Waiting on events, not Thread.join: a join interrupted by Ctrl-C can mark a live thread stopped
        # (CPython 3.11), and the process would exit with its trials still RUNNING.
        try:
            _wait_all(done)
        except KeyboardInterrupt:
            workers.INTERRUPTED.set()  # each worker kills its trial process and closes its trial
            self.halt.set()
            self.ended.set()
            _wait_closing(done)
            raise
        if self.errors:
            raise self.errors[0]

    def stop(self, error: BaseException) -> None:
        """A store went away, a failure streak: stop the other workers too."""
        self.errors.append(error)
        self.halt.set()
        self.ended.set()


def _open_workers(
    spec: Study,
    store: optuna.storages.BaseStorage,
    seed: int,
    n: int,
    record: record_lib.StudyRecord | None,
    process: int = 0,
    prepare: Callable[[optuna.Study], None] | None = None,
) -> list[optuna.Study]:
    """One Study object per worker, each with its own sampler; seeds never repeat across runs, workers
    or processes (:func:`sampler_seed`)."""
    first = open_study(spec, None, seed, store, process)
    if record is not None:
        record_lib.ensure(first, record)
    if spec.enqueue:
        starts.enqueue(first, spec.enqueue, "the study file's enqueue")
    if prepare is not None:
        prepare(first)
    existing = len(first.get_trials(deepcopy=False))
    return [first] + [
        optuna.load_study(
            study_name=spec.name,
            storage=store,
            pruner=build_pruner(spec),
            sampler=build_sampler(spec, seed + i, existing, process),
        )
        for i in range(1, n)
    ]


def _wait_all(events: list[threading.Event]) -> None:
    for e in events:
        while not e.wait(0.2):
            pass


def _wait_closing(events: list[threading.Event]) -> None:
    """Wait for the workers to close their trials; a second Ctrl-C or SIGTERM must not cut that short,
    or trials and runs stay RUNNING. SIGKILL still ends the process (the next run then closes them)."""
    while True:
        try:
            _wait_all(events)
            return
        except KeyboardInterrupt:
            stores.say(
                "still closing the running trials (their runs and re-queued params); one moment "
                "(SIGKILL ends this now: the next run then closes them)"
            )


def _work(study: optuna.Study, objective: Objective, crew: _Crew) -> None:
    """One worker: run trials until the study has its total (or time is up, or another worker failed)."""

    def guarded(trial: optuna.Trial) -> float | list[float]:
        # Exactly N across workers: a trial numbered past the N-th countable one is surplus.
        c = counts(study.get_trials(deepcopy=False), before=trial.number)
        if c["counted"] + c["running"] + c["waiting"] >= crew.trials:
            trial.set_user_attr(NOT_COUNTED, "surplus: the study already had its trials")
            raise Surplus()
        try:
            return objective(trial)
        except (trial_lib.Halt, stores.StoreDown) as e:  # this trial is closed; the others stop too
            crew.stop(e)
            raise

    poll = max(1.0, stores.heartbeat_interval() / 2)
    try:
        while not crew.halt.is_set():
            if crew.streak.error:
                raise SweeperError(crew.streak.error)
            remaining = None if crew.deadline is None else crew.deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            with warnings.catch_warnings():  # experimental in Optuna, and exactly what is needed here
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)  # dead workers' trials: FAIL, params re-queued
            step = _next_step(study, crew)
            if step == "done":
                return
            if step == "wait":  # the last trials run elsewhere; if their worker dies they come back here
                crew.ended.wait(poll)
                crew.ended.clear()
                continue
            try:
                study.optimize(
                    guarded, n_trials=1, timeout=remaining, catch=(Exception,), callbacks=crew.callbacks
                )
            except UpdateFinishedTrialError as e:  # another worker failed it as lost meanwhile
                stores.say(f"a trial of this worker was taken over by another as lost: {e}")
    except KeyboardInterrupt:
        return
    except BaseException as e:
        crew.stop(e)


def _next_step(study: optuna.Study, crew: _Crew) -> Literal["done", "wait", "run"]:
    """Has the study its trials (done), are the last ones running elsewhere (wait), or is there one to
    run here? A design study first queues its failed runs again, so that none is sampled off the design."""
    c = counts(study.get_trials(deepcopy=False))
    if c["counted"] >= crew.trials:
        return "done"
    if crew.design and not c["waiting"]:
        with crew.queue_lock:
            c["waiting"] += design_lib.requeue_failed(study)
    if not c["waiting"] and c["counted"] + c["running"] >= crew.trials:
        return "wait"
    return "run"


def _process_seed_offset() -> int:
    """Processes sharing a server storage must not share sampler seeds, or they propose twins."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000


class _Lost:
    """A trial whose worker died: its params are re-queued (while retries last) and its run closed."""

    def __init__(self, tracker: Tracker | None) -> None:
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial_lib.close_lost(study, trial, self.tracker)


def _mark_stale(storage: optuna.storages.RDBStorage, trial_id: int) -> None:
    grace = os.environ.get("SWEEPER_GRACE", "60")
    how = f"its heartbeat stopped for over {grace}s (killed, or its machine lost)"
    trial_lib.mark_lost(storage, trial_id, how)


def _fail_orphans(study: optuna.Study, lost: _Lost) -> None:
    """Fail and re-queue RUNNING trials at once, where no other process can be running them."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        try:
            trial_lib.mark_lost(study._storage, t._trial_id, "its process ended without closing it (killed)")
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError):  # finished meanwhile
            continue
        lost(study, study._storage.get_trial(t._trial_id))


def _close_lost_runs(study: optuna.Study, tracker: Tracker | None) -> None:
    """Safety net: any MLflow run still RUNNING whose trial has ended (or was never created) is closed
    with the trial's final state and reason."""
    if tracker is None:
        return
    trials = study.get_trials(deepcopy=False)
    states = {t.number: record_lib.run_state(t) for t in trials}
    reasons = {t.number: str(t.user_attrs.get(FAIL_REASON, "")) for t in trials}
    tracker.close_stale_runs(states, reasons)


def _remove_leftovers(study: str) -> None:
    """What killed processes left: staging folders (their artifacts never reached MLflow) and
    half-written checkpoint files."""
    import shutil

    for d in tracking.stale_staging(study):
        shutil.rmtree(d, ignore_errors=True)
    for f in trial_lib.stale_temporaries(study):
        f.unlink(missing_ok=True)


class _Streak:
    """The same error in ``limit`` trials in a row is a broken configuration, not bad luck: stop."""

    def __init__(self, limit: int, total: int | None = None) -> None:
        self.limit = limit
        self.total = total  # 2 x this many failures (at least 10) in one run, whatever their errors, stop it
        self.failed = 0
        self.keys: list[str | None] = []
        self.error: str | None = None
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(NOT_COUNTED) or trial.user_attrs.get(LOST):
            return  # surplus, interrupted, lost and re-queued: says nothing about the configuration
        reason = None
        if trial.state == TrialState.FAIL:  # every failure counts, with a reason or not
            reason = trial.user_attrs.get(FAIL_REASON) or "failed without a recorded reason"
        with self._lock:
            self.failed += reason is not None
            if self.total is not None and self.failed >= max(2 * self.total, 10) and self.error is None:
                self.error = (
                    f"stopped after {self.failed} failed trials in this run (failed trials do not count "
                    f"towards --trials, so the sweep would go on retrying): last, trial {trial.number}: "
                    f"{reason}. `sweeper show` lists every reason; fix them and re-run the command"
                )
            self.keys = [*self.keys, re.sub(r"\d+", "#", reason) if reason else None][-self.limit :]
            if len(self.keys) == self.limit and self.keys[0] is not None and len(set(self.keys)) == 1:
                self.error = (
                    f"stopped after {self.limit} trials in a row failed with the same error (last: trial "
                    f"{trial.number}): {reason}. That is a bug in the study's configuration, not bad luck; "
                    "the full traceback is error.txt in the trial's MLflow run. Fix it and re-run the command"
                )
