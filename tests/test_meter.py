"""The meter: throttled reports of long work, with no process and no clock of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sweeper import meter
from sweeper.meter import Meter, Work


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sent() -> Iterator[list[Work]]:
    got: list[Work] = []
    previous = meter.set_sink(got.append)
    yield got
    meter.set_sink(previous)


def test_reports_at_the_start_then_at_most_every_interval_and_at_the_end(sent: list[Work]) -> None:
    clock = Clock()
    m = Meter("train", 100, epoch=3, every=0.5, clock=clock)
    reads = []

    def loss() -> float:
        reads.append(1)
        return 2.0

    for _ in range(99):  # 99 steps 0.01 s apart: about one report per 0.5 s
        clock.now += 0.01
        m.step(images=4, loss=loss)
    clock.now += 0.01
    m.step(images=4, loss=loss)  # the last step is always reported
    assert [w.done for w in sent] == [0, 50, 100]
    assert len(reads) == 2  # the loss is read only for a report (a device sync on an accelerator)
    last = sent[-1]
    assert (last.what, last.epoch, last.total, last.images, last.loss) == ("train", 3, 100, 400, 2.0)
    assert last.seconds == pytest.approx(1.0) and last.rate == pytest.approx(400.0) and last.eta == 0.0


def test_nothing_is_sent_or_read_without_a_sink() -> None:
    assert meter._sink is None
    m = Meter("train", 3)
    m.step(images=1, loss=lambda: pytest.fail("read without a sink"))
    assert m.done == 1


def test_a_counter_reports_images_done_for_work_that_counts_itself(sent: list[Work]) -> None:
    progress = meter.counter("cache build", 10)
    for i in range(10):
        progress(i + 1)
    assert sent[0].done == 0 and sent[-1].done == 10 and sent[-1].images == 10


def test_rate_and_eta_are_unknown_before_the_first_step() -> None:
    w = Work("cache build", 0, 10, 0.0)
    assert w.rate is None and w.eta is None
    assert Work("cache build", 5, 10, 2.0, images=5).eta == pytest.approx(2.0)
