from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from sweeper import meter
from sweeper.data import images as data
from sweeper.train import evaluation, runs
from sweeper.train import fit as train
from tests.helpers.builders import fit_config

pytestmark = pytest.mark.slow


tiny = functools.partial(fit_config, lr_backbone=3e-3, lr_head=3e-3)


def test_reports_every_epoch_and_keeps_the_best(image_folder: Path) -> None:
    d = data.scan(image_folder)
    seen: list[tuple[int, dict[str, float]]] = []
    works: list[meter.Work] = []
    previous = meter.set_sink(works.append)  # what a trial process sends to the sweep inside each epoch
    try:
        r = train.run_trial(tiny(epochs=3), d, lambda e, m: seen.append((e, m)))
    finally:
        meter.set_sink(previous)
    assert [e for e, _ in seen] == [1, 2, 3]
    batches = [w for w in works if w.what == "train"]
    for epoch in (1, 2, 3):  # each epoch: reported from its first batch (0 done) to its last, with a loss
        mine = [w for w in batches if w.epoch == epoch]
        assert mine[0].done == 0 and mine[-1].done == mine[-1].total >= 1
        assert 0 < mine[-1].images <= len(d.train)
        assert mine[-1].loss == pytest.approx(seen[epoch - 1][1]["train_loss"])
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(seen[0][1])
    for _, m in seen:  # the speed figures: the train loop's images/s and share of it waiting for data
        assert m["train_images_per_s"] > 0 and 0 <= m["data_wait_share"] <= 1
        trained = len(d.train) - len(d.train) % tiny().batch_size  # drop_last
        assert m["train_images_per_s"] * m["epoch_seconds"] >= trained  # the loop is part of the epoch
    starts = [m.get("time_to_first_batch_s") for _, m in seen]  # once, in the first epoch, before it ends
    assert starts[1:] == [None, None] and starts[0] is not None and starts[0] > 0
    accs = [m["val_acc"] for _, m in seen]
    assert r.best["val_acc"] == max(accs) and r.best_epoch == accs.index(max(accs)) + 1
    assert r.confusion is not None and r.confusion.sum() == len(d.val)
    assert set(r.state_dict) == set(evaluation.load_for_inference(tiny(), 3, r.state_dict).state_dict())


def test_report_can_stop_the_run(image_folder: Path) -> None:
    class Stop(Exception):
        pass

    def report(epoch: int, metrics: dict[str, float]) -> None:
        raise Stop

    with pytest.raises(Stop):
        train.run_trial(tiny(epochs=5), data.scan(image_folder), report)


def test_nan_loss_is_a_diverged_error(image_folder: Path) -> None:
    with pytest.raises(train.DivergedError, match="lower the learning rate"):
        train.run_trial(
            tiny(optimizer="sgd", lr_backbone=1e30, lr_head=1e30, warmup_epochs=0), data.scan(image_folder)
        )


def test_gradient_accumulation_matches_the_full_batch(image_folder: Path) -> None:
    d = data.scan(image_folder)
    # ConvNeXt normalizes per sample (LayerNorm), so micro-batches give the full batch's gradient exactly
    kw = {"backbone": "test_convnext", "epochs": 1, "aug.rrc": False, "aug.hflip": False, "optimizer": "sgd"}
    full = train.run_trial(tiny(**kw), d, train_on_val=True)
    acc = train.run_trial(tiny(micro_batch=3, **kw), d, train_on_val=True)
    for k, v in full.state_dict.items():
        assert torch.allclose(v.float(), acc.state_dict[k].float(), atol=1e-5), k
    assert runs.micro_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]


def test_refit_mode_trains_on_train_plus_val_without_validation(image_folder: Path) -> None:
    r = train.run_trial(tiny(epochs=1), data.scan(image_folder), train_on_val=True)
    assert r.best_epoch == 1 and "val_acc" not in r.best and r.confusion is None
