from __future__ import annotations

import io

import pytest
from rich.console import Console

from sweeper.sweep import progress


def test_clock() -> None:
    assert progress.clock(None) == "?"
    assert progress.clock(3725.4) == "1:02:05"
    assert progress.clock(-3) == "0:00:00"


def test_plain_lines_say_trial_epoch_value_best_counts_and_time() -> None:
    out = io.StringIO()
    p = progress.PlainProgress(total=3, epochs=2, metric="val_acc", stream=out)
    p.update({"counted": 1, "pruned": 0, "fail": 0}, None)  # a resumed study with one trial
    p.trial_started(4)
    p.epoch(4, 1, {"val_acc": 0.5, "train_loss": 1.0})
    p.trial_finished(
        4,
        "PRUNED",
        0.5,
        "pruned after epoch 1: val_acc=0.5000",
        {"counted": 2, "pruned": 1, "fail": 0},
        best=0.75,
    )
    first, second = out.getvalue().splitlines()
    assert first.startswith(
        "trial 2/3 (#4) epoch 1/2: val_acc 0.5000 | best - | 0 pruned, 0 failed | elapsed "
    )
    assert second.startswith(
        "trial 4: PRUNED val_acc=0.5000 pruned after epoch 1: val_acc=0.5000 | 2/3 done, "
    )
    assert "best 0.7500 | 1 pruned, 0 failed" in second and "eta 0:00:0" in second
    assert p.k == 3  # the next trial is the third of three


def test_eta_from_epoch_times_before_any_trial_ends_then_from_trial_times() -> None:
    p = progress.Progress(total=4, epochs=10, metric="val_acc")
    assert p.eta() is None
    p.trial_started(0)
    p._epoch_seconds = [2.0]  # one epoch took 2 s: 4 trials x 10 epochs x 2 s, less the time in
    assert p.eta() == pytest.approx(80.0, abs=0.5)
    p.trial_finished(0, "COMPLETE", 0.9, "", {"counted": 1}, 0.9)
    p._durations = [30.0]  # trials take 30 s each; 3 left
    assert p.eta() == pytest.approx(90.0)
    p.done = 4
    assert p.eta() == 0.0


def test_rich_progress_draws_a_bar_and_keeps_finished_trials_above_it() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system="standard")
    with progress.RichProgress(total=2, epochs=3, metric="val_acc", console=console) as p:
        p.trial_started(0)
        p.epoch(0, 2, {"val_acc": 0.625})
        p.live.refresh()
        assert "#0 epoch 2/3 | val_acc 0.6250" in buf.getvalue()
        p.trial_finished(0, "FAIL", None, "ValueError: [bad] value", {"counted": 1, "fail": 1}, None)
    text = buf.getvalue()
    assert "trial 0: FAIL ValueError: [bad] value" in text  # markup-like text is printed as is
    assert "trial 2/2" in text and "1/2" in text and "\x1b[" in text


@pytest.mark.parametrize(
    ("ci", "tty", "live"), [("", True, True), ("true", True, False), ("0", True, True), ("", False, False)]
)
def test_live_only_on_a_terminal_outside_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, tty: bool, live: bool
) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setenv("CI", ci)
    assert progress.wants_live(Stream()) is live
