"""One trial's lifecycle, in memory: what the sweep side does with a trial's epochs and its re-queue."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.store import tracking
from sweeper.study.design import CONFIRM
from sweeper.sweep import trial as trial_lib
from sweeper.sweep.progress import Progress
from tests.helpers.builders import load_study

STUDY = """
name: prunes
data: {root: data}
epochs: 3
pruner: {name: median, n_startup_trials: 0, n_warmup_steps: 0}
space:
  lr_head: {float: [1.0e-3, 1.0e-1], log: true}
"""


def _pruning_study() -> optuna.Study:
    """A study whose median pruner prunes anything below 0.9 at epoch 1."""
    st = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0)
    )
    st.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=0.9,
            params={"lr_head": 1e-2},
            distributions={"lr_head": FloatDistribution(1e-3, 1e-1, log=True)},
            intermediate_values={1: 0.9},
        )
    )
    return st


def _report(tmp_path: Path, trial: optuna.Trial) -> None:
    spec = load_study(tmp_path, STUDY)
    ctx = trial_lib.Context(spec, trial, tracking.NO_RUN, Path(), tmp_path, tracking.NullTracker())
    trial_lib._listener(ctx, Progress(1, 3, "val_acc")).epoch(1, {"val_acc": 0.1})


def test_a_confirmation_re_run_is_never_pruned_whatever_the_studys_pruner(tmp_path: Path) -> None:
    st = _pruning_study()
    with pytest.raises(optuna.TrialPruned):  # an ordinary trial this bad is pruned
        _report(tmp_path, st.ask({"lr_head": FloatDistribution(1e-3, 1e-1, log=True)}))
    st.enqueue_trial({"lr_head": 1e-2}, user_attrs={CONFIRM: 0})
    rerun = st.ask()
    _report(tmp_path, rerun)  # no TrialPruned: it trains every epoch
    assert st.trials[rerun.number].intermediate_values == {1: 0.1}


def test_a_re_queued_trial_keeps_what_it_is_and_drops_its_notes() -> None:
    st = _pruning_study()
    st.enqueue_trial({"lr_head": 1e-2}, user_attrs={CONFIRM: 0})
    t = st.ask()
    t.set_user_attr("fail_reason", "worker lost")
    st.tell(t, state=TrialState.FAIL)
    trial_lib._requeue(st, st.trials[t.number])
    retry = st.get_trials(states=(TrialState.WAITING,))[0]
    assert retry.user_attrs == {CONFIRM: 0} and retry.system_attrs["failed_trial"] == t.number


def test_an_error_while_recording_fails_the_trial_with_what_broke_and_a_full_disk_halts() -> None:
    import errno

    try:
        raise RuntimeError("MLflow said no\nsecond line")
    except RuntimeError as e:
        broke = trial_lib.unexpected(e, "recording the trial's result")
    assert (broke.state, broke.kind) == ("failed", "error")
    assert broke.reason == "recording the trial's result failed: RuntimeError: MLflow said no"
    assert "Traceback" in (broke.details or "")
    full = trial_lib.unexpected(
        OSError(errno.ENOSPC, "No space left on device"), "recording the trial's result"
    )
    assert (full.state, full.kind) == ("halted", "disk") and full.reason.startswith(
        "no space left on the device"
    )
