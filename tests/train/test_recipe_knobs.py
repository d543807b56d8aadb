"""The knobs the recipes' authors turned (issue 14), each checked numerically, training at most one step.

Eval size and crop mode, normalize, OneCycle, optimizer eps/betas, gradient clipping, color-jitter
probability, stem and named-tensor freezing and boosting, the cosine-embedding loss on pre-dropout
features, and timm's weight-decay exemptions.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2 as T

from sweeper.data import augment
from sweeper.errors import SweeperError
from sweeper.study import spec
from sweeper.train import fit as train
from sweeper.train import losses, runs, schedules
from sweeper.train import model as model_lib
from tests.helpers.builders import data_config
from tests.helpers.builders import tiny_config as cfg

DCFG = data_config(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def striped(h: int = 24, w: int = 32) -> torch.Tensor:
    """Grey, with white leftmost and rightmost 2 columns: a center crop loses them, a squash keeps them."""
    img = torch.full((3, h, w), 100, dtype=torch.uint8)
    img[..., :2] = img[..., -2:] = 255
    return img


# ---- evaluation: size, crop mode, normalize ------------------------------------------------------------


def test_eval_size_differs_from_the_train_size() -> None:
    ev = spec.EvalConfig(img_size=12, crop_pct=0.75)
    out = augment.eval_transform(DCFG, ev)(striped())
    assert out.shape == (3, 12, 12)  # train stays 16, eval 12
    assert augment.train_transform(spec.AugConfig(), DCFG)(striped()).shape == (3, 16, 16)
    assert augment.eval_transform(DCFG, ev).transforms[0].size == 16  # floor(12 / 0.75)


def test_squash_keeps_the_whole_image_and_center_crops_the_sides() -> None:
    to01 = {"normalize": False}
    squash = augment.eval_transform(DCFG, spec.EvalConfig(crop_pct=1.0, crop_mode="squash"), **to01)
    center = augment.eval_transform(DCFG, spec.EvalConfig(crop_pct=1.0, crop_mode="center"), **to01)
    s, c = squash(striped()), center(striped())
    assert s.shape == c.shape == (3, 16, 16)
    assert s[:, :, 0].min() > 0.8 and s[:, :, -1].min() > 0.8  # the white edges survive the squash
    assert c[:, :, 0].max() < 0.5 and c[:, :, -1].max() < 0.5  # and are cropped away in center mode


def test_border_mode_pads_with_the_mean_color_and_loses_nothing() -> None:
    t = augment.eval_transform(DCFG, spec.EvalConfig(crop_pct=1.0, crop_mode="border"), normalize=False)
    out = t(striped(16, 32))  # long side to 16, short side 8: padded top and bottom
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out[:, 0, :], torch.full((3, 16), 128 / 255))  # fill = mean x 255
    assert out[:, 8, 0].min() > 0.8  # the white left edge is kept


def test_the_models_crop_mode_applies_when_unset() -> None:
    ops = augment.eval_transform({**DCFG, "crop_mode": "squash"}).transforms
    assert ops[0].size == (18, 18)  # timm's squash: both edges to floor(16 / 0.875)


def test_normalize_off_leaves_pixels_in_0_1() -> None:
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    aug = spec.AugConfig(rrc=False, hflip=False)
    torch.testing.assert_close(augment.train_transform(aug, DCFG, normalize=False)(img), img / 255)
    ev = spec.EvalConfig(crop_pct=1.0)
    torch.testing.assert_close(augment.eval_transform(DCFG, ev, normalize=False)(img), img / 255)
    torch.testing.assert_close(augment.eval_transform(DCFG, ev)(img), (img / 255 - 0.5) / 0.5)


def test_color_jitter_probability_wraps_the_jitter() -> None:
    ops = {type(t): t for t in augment.train_transform(spec.AugConfig(color_jitter=True), DCFG).transforms}
    assert T.ColorJitter in ops  # p = 1 (default): always, unwrapped
    aug = spec.AugConfig(rrc=False, hflip=False, color_jitter=True, color_jitter_p=0.8, brightness=0.9)
    (apply,) = [t for t in augment.train_transform(aug, DCFG).transforms if isinstance(t, T.RandomApply)]
    assert apply.p == 0.8 and isinstance(apply.transforms[0], T.ColorJitter)
    never = augment.train_transform(
        spec.AugConfig(rrc=False, hflip=False, color_jitter=True, color_jitter_p=0.0), DCFG, normalize=False
    )
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(never(img), img / 255)


# ---- optimizer and schedule ----------------------------------------------------------------------------


def test_onecycle_lr_curve_is_torchs() -> None:
    c = cfg(lr_schedule="onecycle", epochs=3, onecycle_pct_start=0.25, onecycle_div_factor=10.0)
    model = model_lib.create(c, 3)
    opt = model_lib.create_optimizer(model, c)
    peaks = [g["lr"] for g in opt.param_groups]  # backbone, head: each its own peak
    ours = schedules.create(opt, c, steps_per_epoch=7)
    ref_opt = torch.optim.AdamW([{"params": [torch.zeros(1)]} for _ in peaks])
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt,
        max_lr=peaks,
        total_steps=21,
        pct_start=0.25,
        div_factor=10.0,
        final_div_factor=1e4,
    )
    curve = []
    for _ in range(21):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr())
        curve.append(ours.get_last_lr()[0])
        opt.step()
        ours.step()
        ref_opt.step()
        ref.step()
    assert max(curve) == pytest.approx(c.lr_backbone, rel=0.01)
    assert curve[0] == pytest.approx(c.lr_backbone / 10)
    assert curve[-1] == pytest.approx(c.lr_backbone / 10 / 1e4)  # annealed to ~0


def test_adam_eps_and_betas_reach_the_optimizer() -> None:
    c = cfg(optimizer="adamw", opt_eps=1e-5, opt_betas=(0.8, 0.99))
    opt = model_lib.create_optimizer(model_lib.create(c, 3), c)
    assert all(g["eps"] == 1e-5 and tuple(g["betas"]) == (0.8, 0.99) for g in opt.param_groups)
    assert model_lib.create_optimizer(model_lib.create(cfg(), 3), cfg()).param_groups[0]["eps"] == 1e-8


class _NormAtStep:
    """Wraps an optimizer: records the gradients' global norm each time it steps."""

    def __init__(self, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
        self.opt, self.params, self.norms = opt, params, []
        self.param_groups = opt.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        grads = [p.grad.flatten() for p in self.params if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))
        self.opt.step()


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_a_clipped_gradients_norm_is_at_most_the_limit(clip) -> None:
    torch.manual_seed(0)
    c = cfg(grad_clip=clip, optimizer="sgd", lr_schedule="constant", warmup_epochs=0)
    model = model_lib.create(c, 3)
    opt = _NormAtStep(model_lib.create_optimizer(model, c), list(model.parameters()))
    sched = schedules.create(opt.opt, c, 2)
    batches = [(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]))] * 2
    runs.train_epoch(model, opt, sched, batches, c, None, torch.device("cpu"))
    if clip is None:
        assert min(opt.norms) > 1e-2  # the unclipped gradient is far above the limit
    else:
        assert max(opt.norms) <= clip * (1 + 1e-5)


# ---- freezing and boosting -----------------------------------------------------------------------------


def test_freeze_stem_freezes_exactly_what_precedes_the_first_stage() -> None:
    model = model_lib.create(cfg(freeze_stem=True), 3)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(("conv1.", "bn1."))}


def _unchanged_after_a_step(c: spec.TrialConfig) -> set[str]:
    torch.manual_seed(0)
    model = model_lib.create(c, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = model_lib.create_optimizer(model, c)
    batches = [(torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]))]
    runs.train_epoch(model, opt, schedules.create(opt, c, 1), batches, c, None, torch.device("cpu"))
    return {n for n, p in model.named_parameters() if torch.equal(p, before[n])}


def test_named_tensor_freeze_leaves_exactly_those_unchanged_after_a_step() -> None:
    base = {"optimizer": "sgd", "lr_schedule": "constant", "lr_backbone": 0.1, "warmup_epochs": 0}
    free = _unchanged_after_a_step(cfg(**base))  # zero-initialised residual norms give zero gradients
    frozen = _unchanged_after_a_step(cfg(**base, freeze=("layer4.0.conv1.*", "fc.bias")))
    assert {"layer4.0.conv1.weight", "fc.bias"}.isdisjoint(free)
    assert frozen == free | {"layer4.0.conv1.weight", "fc.bias"}


def test_a_pattern_that_matches_nothing_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(SweeperError, match=r"freeze: pattern 'layer4.0.conv9.weight' .*did you mean"):
        model_lib.create(cfg(freeze=("layer4.0.conv9.weight",)), 3)


def test_boosted_patterns_get_their_own_lr_and_weight_decay_per_pattern() -> None:
    c = cfg(boost=("layer4.0.conv1.*", "layer4.0.conv2.*"), **{"sensitivity.lr": (0.003, 0.0008)})
    c = spec.build_config({**c.flat(), "sensitivity.weight_decay": (0.005, 0.007)})
    model = model_lib.create(c, 3)
    groups = model_lib.param_groups(model, c, train._boosted(model, c))
    by_name = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert by_name["layer4.0.conv1.weight"] == (0.003, 0.005)
    assert by_name["layer4.0.conv2.weight"] == (0.0008, 0.007)


# ---- weight decay exemptions ---------------------------------------------------------------------------


def test_weight_decay_skips_what_the_model_names_as_timm_does() -> None:
    c = cfg(backbone="test_vit", weight_decay=0.05)
    model = model_lib.create(c, 3)
    decay_of = {id(p): g["weight_decay"] for g in model_lib.param_groups(model, c) for p in g["params"]}
    params = dict(model.named_parameters())
    assert decay_of[id(params["pos_embed"])] == decay_of[id(params["cls_token"])] == 0.0  # 3-d, exempt
    assert decay_of[id(params["blocks.0.attn.qkv.weight"])] == 0.05


# ---- the pairwise cosine-embedding loss, on pre-dropout features ---------------------------------------


def test_cosine_embedding_equals_torchs_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    feats, labels = torch.randn(12, 8), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    ours = losses.cosine_embedding(feats, labels, margin=0.2, generator=torch.Generator().manual_seed(5))
    j, target = losses.sample_pairs(labels, torch.Generator().manual_seed(5))
    expected = torch.nn.CosineEmbeddingLoss(margin=0.2)(feats, feats[j], target)
    torch.testing.assert_close(ours, expected)
    assert (target == torch.where(labels == labels[j], 1, -1)).all() and (j != torch.arange(12)).all()


def test_pairs_are_half_same_class() -> None:
    labels = torch.arange(1000) % 4
    j, target = losses.sample_pairs(labels, torch.Generator().manual_seed(0))
    assert 0.45 < (target == 1).float().mean() < 0.55 and (j != torch.arange(1000)).all()


@pytest.mark.parametrize("head", ["dropout", "attention"])
def test_auxiliary_losses_see_the_features_before_the_dropout(head: str) -> None:
    model = model_lib.create(cfg(head=head, head_dropout=0.7), 3).train()
    x = torch.rand(4, 3, 16, 16)
    torch.manual_seed(0)
    feats, logits = model_lib.features_and_logits(model, x)
    if head == "dropout":
        pooled = model.global_pool(model.forward_features(x))
        classifier = model.fc
    else:
        pooled = model.head.pool(model.backbone.forward_features(x))
        classifier = model.head.fc
    torch.testing.assert_close(feats, pooled)  # the pooled features as they are: no dropout mask or 1/(1-p)
    assert not torch.allclose(logits, classifier(feats))  # the classifier saw dropped-out features
    model.eval()
    torch.testing.assert_close(model(x), classifier(model_lib.features_and_logits(model, x)[0]))
