"""Training-loop techniques on tiny real data: checkpoint, early stopping, k-fold, merging, EMA, SupCon."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper.data import images as data_lib
from sweeper.study import spec
from sweeper.train import fit as train
from sweeper.train import model as model_lib
from tests.helpers.builders import tiny_config

cfg = functools.partial(tiny_config, batch_size=8, epochs=1, warmup_epochs=0, lr_backbone=3e-3, lr_head=3e-2)


@pytest.fixture
def data(image_folder: Path) -> data_lib.ImageFolderData:
    return data_lib.scan(image_folder)


def test_kfold_is_stratified_and_each_image_validates_once(data) -> None:
    split = data.train + data.val
    folds = data_lib.kfold(split, 3, seed=0)
    vals = [f for _, va in folds for f in va.files]
    assert sorted(vals) == sorted(split.files)
    for tr, va in folds:
        assert not set(tr.files) & set(va.files) and len(tr) + len(va) == len(split)
        assert np.bincount(va.labels).tolist() == [5, 5, 5]  # 15 per class, dealt evenly
    assert [va.files for _, va in data_lib.kfold(split, 3, seed=0)] == [va.files for _, va in folds]


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["val_acc", "val_loss"])
def test_checkpoint_keeps_the_chosen_epoch(data, keep: str) -> None:
    r = train.fit(cfg(epochs=3, checkpoint=keep), data.train, data.val, data.classes)
    h = r.history
    expected = {
        "val_acc": int(np.argmax([m["val_acc"] for m in h])),
        "val_loss": int(np.argmin([m["val_loss"] for m in h])),
    }[keep]
    assert r.best_epoch == expected + 1 and r.best == h[expected]


@pytest.mark.slow
def test_patience_stops_a_run_that_stopped_improving(data) -> None:
    reports = []
    r = train.fit(
        cfg(epochs=6, patience=2, lr_backbone=0.0, lr_head=0.0, checkpoint="val_loss"),
        data.train,
        data.val,
        data.classes,
        lambda e, m: reports.append(e),
    )
    assert (
        r.stopped_early == 3 and len(r.history) == 3 and reports == [1, 2, 3]
    )  # LR 0: epochs 2, 3 no better


@pytest.mark.slow
def test_kfold_trial_reports_every_fold_and_returns_the_mean(data) -> None:
    steps: list[tuple[int, int]] = []
    r = train.run_trial(cfg(epochs=2, folds=2), data, lambda e, m: steps.append((e, m["fold"])))
    assert steps == [(1, 0), (2, 0), (3, 1), (4, 1)]  # fold f, epoch e -> step f * epochs + e
    assert len(r.fold_states) == 2 and not r.state_dict
    fold_best = [
        max(r.history[0:2], key=lambda m: m["val_acc"]),
        max(r.history[2:4], key=lambda m: m["val_acc"]),
    ]
    assert r.best["val_acc"] == pytest.approx(np.mean([m["val_acc"] for m in fold_best]))
    assert r.confusion.sum() == len(data.train) + len(data.val)  # out-of-fold: every image once


@pytest.mark.slow
def test_merged_replicas_train_apart_end_each_epoch_averaged_and_report_each(data, monkeypatch) -> None:
    from sweeper.train import averaging

    seen = []
    real = averaging.merge

    def spy(models):  # observe the real merge: replicas differ before it, match after it
        states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
        seen.append(any(not torch.equal(states[0][k], states[1][k]) for k in states[0]))
        real(models)
        after = [m.state_dict() for m in models]
        for k in after[0]:
            torch.testing.assert_close(after[0][k], after[1][k])
            if after[0][k].is_floating_point():
                torch.testing.assert_close(after[0][k], (states[0][k] + states[1][k]) / 2)

    monkeypatch.setattr(averaging, "merge", spy)
    r = train.fit(cfg(epochs=2, merge_models=2), data.train, data.val, data.classes)
    assert seen == [True, True] and len(r.history) == 2
    replicas = {"val_acc_replica0", "val_acc_replica1", "val_loss_replica0", "val_loss_replica1"}
    assert replicas <= set(r.history[0])  # each replica's val metrics are reported too


@pytest.mark.slow
def test_ema_weights_are_what_the_trial_keeps(data) -> None:
    plain = train.fit(cfg(epochs=2, checkpoint="last"), data.train, data.val, data.classes)
    ema = train.fit(cfg(epochs=2, checkpoint="last", ema_decay=0.9), data.train, data.val, data.classes)
    assert plain.best_epoch == ema.best_epoch == 2  # checkpoint: last
    w = "layer4.0.conv1.weight"
    assert not torch.equal(plain.state_dict[w], ema.state_dict[w])  # same run, averaged weights kept
    torch.manual_seed(0)
    from sweeper.train import model as model_lib

    init = model_lib.create(cfg(), 3).state_dict()[w]
    # the EMA lies between the initial and the final raw weights, closer to the final ones
    assert (ema.state_dict[w] - plain.state_dict[w]).norm() < (init - plain.state_dict[w]).norm()


@pytest.mark.slow
def test_supcon_and_a_feature_head_train_together(data) -> None:
    r = train.fit(
        cfg(epochs=1, supcon_weight=0.5, head="attention", micro_batch=4, **{"aug.mixup": True}),
        data.train,
        data.val,
        data.classes,
    )
    assert np.isfinite(r.best["train_loss"]) and 0 <= r.best["val_acc"] <= 1


@pytest.mark.slow
def test_checkpoint_both_keeps_the_best_loss_and_the_best_acc_epoch(data, tmp_path: Path) -> None:
    from sweeper.train import artifacts

    r = train.fit(cfg(epochs=3, checkpoint="both"), data.train, data.val, data.classes)
    h = r.history
    assert r.best_epoch == int(np.argmax([m["val_acc"] for m in h])) + 1  # the objective's (val_acc)
    epoch, metrics, state = r.also_kept["val_loss"]
    assert epoch == int(np.argmin([m["val_loss"] for m in h])) + 1 and metrics == h[epoch - 1]
    artifacts.write_trial(tmp_path, cfg(checkpoint="both"), data.classes, r)
    saved = artifacts.load_weights(tmp_path / "best-val_loss.safetensors")
    assert (tmp_path / "best.safetensors").is_file() and all(torch.equal(saved[k], state[k]) for k in state)


@pytest.mark.slow
def test_fold_holdout_never_trains_on_val_and_scores_every_fold_and_the_ensemble(data, monkeypatch) -> None:
    from sweeper.data import loaders

    trained_on: list[str] = []
    real = loaders.Pipelines.train

    def spy(self, split):
        trained_on.extend(map(str, split.files))
        return real(self, split)

    monkeypatch.setattr(loaders.Pipelines, "train", spy)
    r = train.run_trial(cfg(epochs=1, folds=2, fold_holdout=True), data)
    assert trained_on and not set(trained_on) & set(map(str, data.val.files))
    assert set(trained_on) == set(map(str, data.train.files))
    assert r.confusion.sum() == len(data.train)  # folds over train only
    folds = [r.best["holdout_acc_fold0"], r.best["holdout_acc_fold1"]]
    assert r.best["holdout_acc"] == pytest.approx(np.mean(folds))
    assert 0 <= r.best["holdout_ensemble_acc"] <= 1 and np.isfinite(r.best["holdout_ensemble_loss"])


class _Killed(Exception):
    """Stands in for a worker that died after an epoch checkpoint was written."""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "kill_at", "expected"),
    [
        ({"folds": 2}, 2, [3, 4, 5, 6]),  # fold 0 epoch 2 -> resumes at fold 0 epoch 3, then fold 1
        ({"merge_models": 2, "ema_decay": 0.9}, 1, [2, 3]),
    ],
)
def test_a_killed_trial_resumes_where_it_stopped(data, tmp_path: Path, extra, kill_at, expected) -> None:
    from sweeper.train import checkpoints

    c, ckpt = cfg(epochs=3, **extra), tmp_path / "trial.ckpt"

    def kill(step: int, m: dict[str, float]) -> None:
        if step == kill_at:
            raise _Killed

    with pytest.raises(_Killed):
        train.run_trial(c, data, kill, checkpoint=ckpt)
    step, history = checkpoints.saved_state(ckpt, c)
    assert step == kill_at and [s for s, _ in history] == list(range(1, kill_at + 1))
    steps: list[int] = []
    r = train.run_trial(c, data, lambda s, m: steps.append(s), checkpoint=ckpt)
    assert steps == expected
    assert len(r.history) == 6 if "folds" in extra else len(r.history) == 3


@pytest.mark.slow
def test_the_recipe_cells_knobs_train_end_to_end(data) -> None:
    """002's contrastive row (dataset partners, partner CE, last batch kept) and 000's boost cell (two
    named tensors, one clipped, BatchNorms updating) in fp16 with its scaler: whole epochs that finish."""
    pairs = cfg(cosine_weight=15.0, cosine_margin=0.2, cosine_partners="dataset", cosine_partner_ce=True)
    pairs = spec.build_config({**pairs.flat(), "drop_last": False, "precision": "fp16", "micro_batch": 5})
    r = train.fit(pairs, data.train, data.val, data.classes)
    assert np.isfinite(r.best["val_loss"]) and r.history[0]["train_loss"] > 0
    tensors = ("layer4.0.downsample.1.weight", "fc.weight")
    boost = cfg(
        optimizer="adamw",
        train_only=tensors,
        boost=tensors,
        grad_clip=2.0,
        grad_clip_tensors=tensors[:1],
        freeze_bn_stats=False,
        **{"sensitivity.lr": (1e-3, 8e-4), "sensitivity.weight_decay": (0.005, 0.007)},
    )
    torch.manual_seed(boost.seed)
    before = model_lib.create(boost, len(data.classes)).state_dict()
    r = train.fit(boost, data.train, data.val, data.classes)
    changed = {k for k, v in r.state_dict.items() if not torch.equal(v, before[k])}
    assert set(tensors) <= changed and "layer1.0.conv1.weight" not in changed
    assert any(k.endswith("running_mean") for k in changed)  # the BatchNorms kept updating
