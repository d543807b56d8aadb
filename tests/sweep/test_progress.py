from __future__ import annotations

import io

import pytest
from rich.console import Console

from sweeper import meter
from sweeper.errors import SweeperError
from sweeper.meter import Work
from sweeper.sweep import progress


def test_clock() -> None:
    assert progress.clock(None) == "?"
    assert progress.clock(3725.4) == "1:02:05"
    assert progress.clock(-3) == "0:00:00"


def test_plain_lines_say_trial_epoch_value_best_counts_and_time() -> None:
    out = io.StringIO()
    p = progress.PlainProgress(total=3, epochs=2, metric="val_acc", stream=out, seconds=30)
    p.update({"counted": 1, "pruned": 0, "fail": 0}, None)  # a resumed study with one trial
    p.trial_started(4)
    p.epoch(4, 1, {"val_acc": 0.5, "train_loss": 1.0})
    assert out.getvalue() == ""  # no line per epoch: a line comes every `seconds` (tick) instead
    p.tick()
    first, running = out.getvalue().splitlines()
    assert first.startswith("progress 0:00:00 | 1/3 trials done | best val_acc - | 0 pruned, 0 failed")
    assert running == "progress 0:00:00 |   #4 epoch 1/2 | val_acc 0.5000"
    p.trial_finished(
        4,
        "PRUNED",
        0.5,
        "pruned after epoch 1: val_acc=0.5000",
        {"counted": 2, "pruned": 1, "fail": 0},
        best=0.75,
    )
    second = out.getvalue().splitlines()[-1]
    assert second.startswith(
        "trial 4: PRUNED val_acc=0.5000 pruned after epoch 1: val_acc=0.5000 | 2/3 done, "
    )
    assert "best 0.7500 | 1 pruned, 0 failed" in second and "eta 0:00:0" in second
    assert p.k == 3  # the next trial is the third of three
    assert p.trial_lines() == []


def test_plain_ticks_show_each_running_trial_inside_its_epoch() -> None:
    out = io.StringIO()
    p = progress.PlainProgress(total=4, epochs=5, metric="val_acc", stream=out, seconds=30)
    p.trial_started(3)
    p.trial_started(4)  # --workers 2: both run
    p.epoch(3, 1, {"val_acc": 0.71})
    p.working(3, Work("train", 120, 400, 60.0, images=7680, epoch=2, loss=1.23456))
    p.working(4, Work("cache build", 5000, 21000, 6.0, images=5000))
    p.tick()
    lines = out.getvalue().splitlines()
    assert lines[1:] == [
        "progress 0:00:00 |   #3 epoch 2/5: batch 120/400, 128 img/s, loss 1.2346, eta 0:02:20 "
        "| val_acc 0.7100",
        "progress 0:00:00 |   #4 cache build: 5000/21000 images, 833 img/s, eta 0:00:19",
    ]
    p.trial_finished(4, "FAIL", None, "boom", {"counted": 0, "fail": 1}, None)
    assert [line.split("#")[1][0] for line in p.trial_lines()] == ["3"]


def test_work_lines_before_the_first_step_and_with_slow_rates() -> None:
    assert (
        progress.work_line(Work("train", 0, 60, 0.0, epoch=1), 2) == "epoch 1/2: batch 0/60, ? img/s, eta ?"
    )
    slow = Work("decode check", 3, 12, 2.0, images=3)
    assert progress.work_line(slow) == "decode check: 3/12 images, 1.5 img/s, eta 0:00:06"


@pytest.mark.parametrize(("raw", "ok"), [("", 30.0), ("0.2", 0.2), ("0", None), ("soon", None)])
def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str, ok: float | None) -> None:
    monkeypatch.setenv(progress.INTERVAL_ENV, raw)
    if ok is None:
        with pytest.raises(SweeperError, match="SWEEPER_PROGRESS_S"):
            progress.interval()
    else:
        assert progress.interval() == ok


def test_a_work_display_is_this_process_s_sink_while_entered() -> None:
    out = io.StringIO()
    with progress.WorkDisplay(epochs=3, stream=out, seconds=30) as d:
        m = meter.Meter("train", 1, epoch=2, clock=lambda: 0.0)
        m.step(images=8, loss=lambda: 0.5)  # the last step: reported, however soon
        d.tick()
    assert meter._sink is None  # restored on exit
    assert out.getvalue().startswith("progress epoch 2/3: batch 1/1, ? img/s, loss 0.5000, eta ? | elapsed ")
    silent = io.StringIO()
    with progress.WorkDisplay(show=False, stream=silent, seconds=30) as d:  # --quiet: counted, not shown
        meter.Meter("decode check", 2).step()
    assert silent.getvalue() == "" and d.work is not None


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
        p.working(0, Work("train", 5, 20, 2.5, images=50, epoch=3, loss=0.75))
        p.live.refresh()
        assert (
            "#0 epoch 3/3: batch 5/20, 20.0 img/s, loss 0.7500, eta 0:00:08 | val_acc 0.6250"
            in buf.getvalue()
        )
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
