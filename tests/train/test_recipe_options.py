"""Each technique of the published recipes, as a study option, does what it claims (CPU, milliseconds).

Covers optimizers and LRs, heads, augmentations, evaluation (crop, TTA), label smoothing, the new study
keys and their validation. Sensitive layers, losses and weight averaging have their own test files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2 as T

from sweeper.data import augment
from sweeper.errors import SweeperError
from sweeper.study import spec
from sweeper.train import evaluation, schedules
from sweeper.train import model as model_lib
from tests.helpers.builders import config, data_config, write_study
from tests.helpers.builders import tiny_config as cfg

DCFG = data_config(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


# ---- 1. optimizers and learning rates ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "extra", "cls", "base"),
    [
        ("sgd", {}, torch.optim.SGD, None),
        ("sgd", {"nesterov": True}, torch.optim.SGD, None),
        ("adam", {}, torch.optim.Adam, None),
        ("adamw", {}, torch.optim.AdamW, None),
        ("radam", {}, torch.optim.RAdam, None),
        ("ranger", {}, None, torch.optim.RAdam),
    ],
)
def test_optimizers_come_from_timms_factory(name, extra, cls, base) -> None:
    c = cfg(optimizer=name, momentum=0.8, **extra)
    opt = model_lib.create_optimizer(model_lib.create(c, 3), c)
    if base is not None:  # Ranger = RAdam inside Lookahead
        from timm.optim import Lookahead

        assert isinstance(opt, Lookahead) and isinstance(opt._base_optimizer, base)
    else:
        assert type(opt) is cls
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.8
        assert opt.param_groups[0]["nesterov"] is bool(extra.get("nesterov"))


def test_backbone_and_head_lrs_and_batch_scaling() -> None:
    c = cfg(lr_backbone=1e-4, lr_head=1e-3, batch_size=64, lr_scale_batch=True)
    groups = model_lib.param_groups(model_lib.create(c, 3), c)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"backbone": pytest.approx(1e-4 * 64 / 256), "head": pytest.approx(1e-3 * 64 / 256)}
    assert {g["weight_decay"] for g in groups} == {0.05, 0.0}  # no decay on biases and norms


def test_layer_decay_lowers_the_lr_of_earlier_layers() -> None:
    c = cfg(lr_backbone=1e-3, layer_decay=0.5)
    model = model_lib.create(c, 3)
    groups = model_lib.param_groups(model, c)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    stem, last = model.conv1[0].weight, model.layer4[-1].conv1.weight
    assert lr_of[id(stem)] < lr_of[id(last)] <= 1e-3
    assert lr_of[id(model.fc.weight)] == pytest.approx(c.lr_head)


def test_constant_schedule_and_cosine_after_warmup() -> None:
    const = schedules.lr_multiplier("constant", 100, 10)
    cos = schedules.lr_multiplier("cosine", 100, 10)
    assert const(0) == 0.0 and const(5) == pytest.approx(0.5) and const(10) == const(99) == 1.0
    assert cos(10) == pytest.approx(1.0) and cos(99) < 0.01


# ---- 3. heads ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["linear", "dropout", "se", "attention"])
def test_every_head_classifies_and_exposes_its_features(head: str) -> None:
    model = model_lib.create(cfg(head=head, head_dropout=0.5), 5).eval()
    x = torch.randn(2, 3, 16, 16)
    feats, logits = model_lib.features_and_logits(model, x)
    assert logits.shape == (2, 5) and feats.ndim == 2
    torch.testing.assert_close(logits, model(x))
    kinds = {type(m) for m in model.get_classifier().modules()} | {type(m) for m in model.modules()}
    if head == "se":
        assert isinstance(model, model_lib.HeadedModel) and torch.nn.Sigmoid in kinds
    if head == "attention":
        assert isinstance(model, model_lib.HeadedModel) and torch.nn.MultiheadAttention in kinds


def test_dropout_head_drops_in_training_only() -> None:
    model = model_lib.create(cfg(head="dropout", head_dropout=0.7), 5)
    x = torch.randn(4, 3, 16, 16)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


# ---- 4. augmentations ----------------------------------------------------------------------------------


def ops(aug: spec.AugConfig) -> dict[type, object]:
    return {type(t): t for t in augment.train_transform(aug, DCFG).transforms}


def test_every_augmentation_is_off_by_default_except_crop_and_flip() -> None:
    kinds = set(ops(spec.AugConfig()))
    assert kinds == {T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToDtype, T.Normalize}


@pytest.mark.parametrize(
    ("aug", "kind", "check"),
    [
        ({"rrc": False}, T.Resize, lambda t: t.size == [16, 16]),
        (
            {"rrc_scale": (0.5, 1.0), "rrc_ratio": (0.9, 1.1)},
            T.RandomResizedCrop,
            lambda t: t.scale == (0.5, 1.0) and t.ratio == (0.9, 1.1),
        ),
        ({"hflip_p": 0.8}, T.RandomHorizontalFlip, lambda t: t.p == 0.8),
        ({"vflip": True, "vflip_p": 0.3}, T.RandomVerticalFlip, lambda t: t.p == 0.3),
        ({"rotation": True, "rotation_deg": 30.0}, T.RandomRotation, lambda t: t.degrees == [-30.0, 30.0]),
        (
            {"translate": True, "translate_frac": 0.1},
            T.RandomAffine,
            lambda t: tuple(t.translate) == (0.1, 0.1) and list(t.degrees) == [0.0, 0.0],
        ),
        (
            {"color_jitter": True, "brightness": 0.2, "contrast": 0.3, "saturation": 0.4, "hue": 0.1},
            T.ColorJitter,
            lambda t: (
                t.brightness == (0.8, 1.2)
                and t.contrast == (0.7, 1.3)
                and t.saturation == (0.6, 1.4)
                and t.hue == (-0.1, 0.1)
            ),
        ),
        ({"grayscale": True, "grayscale_p": 0.2}, T.RandomGrayscale, lambda t: t.p == 0.2),
        (
            {"blur": True, "blur_p": 0.4, "blur_kernel": 5},
            T.RandomApply,
            lambda t: t.p == 0.4 and t.transforms[0].kernel_size == (5, 5),
        ),
        (
            {"sharpness": True, "sharpness_factor": 2.0, "sharpness_p": 0.6},
            T.RandomAdjustSharpness,
            lambda t: t.sharpness_factor == 2.0 and t.p == 0.6,
        ),
        (
            {"randaugment": True, "randaugment_n": 3, "randaugment_m": 7},
            T.RandAugment,
            lambda t: t.num_ops == 3 and t.magnitude == 7,
        ),
        ({"augmix": True, "augmix_severity": 2}, T.AugMix, lambda t: t.severity == 2),
        ({"erasing": True, "erasing_p": 0.5}, T.RandomErasing, lambda t: t.p == 0.5),
    ],
)
def test_each_augmentation_switches_on_with_its_magnitude(aug, kind, check) -> None:
    found = ops(spec.AugConfig(**aug))
    assert kind in found and check(found[kind])
    out = augment.train_transform(spec.AugConfig(**aug), DCFG)(
        torch.randint(0, 255, (3, 20, 24), dtype=torch.uint8)
    )
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32


def test_vertical_flip_with_p1_flips_the_image() -> None:
    aug = spec.AugConfig(rrc=False, hflip=False, vflip=True, vflip_p=1.0)
    img = torch.arange(16 * 16 * 3, dtype=torch.uint8).reshape(3, 16, 16)
    torch.testing.assert_close(
        augment.train_transform(aug, DCFG)(img),
        augment.train_transform(spec.AugConfig(rrc=False, hflip=False), DCFG)(img).flip(1),
    )


@pytest.mark.parametrize("which", ["mixup", "cutmix"])
def test_mixup_and_cutmix_targets_are_soft(which: str) -> None:
    torch.manual_seed(0)
    mix = augment.mixer(spec.AugConfig(**{which: True}), label_smoothing=0.0, num_classes=4)
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    x2, target = mix(x.clone(), y)
    assert target.shape == (8, 4)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert ((target > 0) & (target < 1)).any()  # mixed labels, not one-hot
    assert not torch.equal(x2, x)


def test_mix_probability_zero_leaves_batches_unmixed() -> None:
    mix = augment.mixer(spec.AugConfig(mixup=True, mix_prob=0.0), label_smoothing=0.0, num_classes=4)
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    x2, target = mix(x.clone(), y)
    torch.testing.assert_close(x2, x)
    torch.testing.assert_close(target, torch.eye(4))
    assert augment.mixer(spec.AugConfig(), 0.0, 4) is None


# ---- 5. evaluation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pct", "resize"), [(0.875, 18), (1.0, 16), (None, 18), (0.9, 17)])
def test_center_crop_ratio_floors_like_timm(pct, resize) -> None:
    t = augment.eval_transform(DCFG, spec.EvalConfig(crop_pct=pct)).transforms
    assert t[0].size == resize and list(t[1].size) == [16, 16]  # 16 / 0.9 = 17.8: floor, as timm


def test_tta_is_the_mean_of_the_image_and_its_mirror() -> None:
    model = model_lib.create(cfg(), 3).eval()
    x, y = torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
    ((p_tta, _),) = evaluation.predict_logits(model, [(x, y)], torch.device("cpu"), tta=True)
    with torch.no_grad():
        expected = 0.5 * (model(x).softmax(1) + model(x.flip(3)).softmax(1))
    torch.testing.assert_close(p_tta, expected)
    ((p_plain, _),) = evaluation.predict_logits(model, [(x, y)], torch.device("cpu"), tta=False)
    assert not torch.allclose(p_plain, p_tta)


# ---- 6. label smoothing --------------------------------------------------------------------------------


def test_label_smoothing_softens_mixed_targets_too() -> None:
    mix = augment.mixer(spec.AugConfig(mixup=True, mix_prob=0.0), label_smoothing=0.2, num_classes=4)
    _, target = mix(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    assert target[0, 0] == pytest.approx(0.8 + 0.2 / 4) and target[0, 1] == pytest.approx(0.2 / 4)


# ---- study keys ----------------------------------------------------------------------------------------


def write(tmp_path: Path, body: str) -> str:
    return str(write_study(tmp_path / "s.yaml", "name: s\ndata: builtin:digits\n" + body))


def test_recipe_keys_parse_nested_and_dotted(tmp_path: Path) -> None:
    s = spec.load(
        write(
            tmp_path,
            """
constraints: {max_params: 1.0e+8}
fixed:
  sensitivity: {action: boost, top_k: 2, weight_decay: 0.005}
  folds: 5
  merge_models: 2
  ema_decay: 0.999
  checkpoint: val_loss
  patience: 3
  lr_schedule: constant
space:
  supcon_weight: {float: [0.0, 0.5]}
  sensitivity.lr: {float: [1.0e-4, 1.0e-2], log: true}
""",
        )
    )
    assert s.max_params == 100_000_000
    c = s.resolve({"supcon_weight": 0.25, "sensitivity.lr": 0.001})
    assert c.sensitivity.lr == (0.001,) and c.sensitivity.weight_decay == (0.005,)
    assert (c.folds, c.merge_models, c.ema_decay, c.checkpoint, c.patience) == (5, 2, 0.999, "val_loss", 3)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("fixed: {folds: 0}", "fixed.folds: must be >= 1, got 0"),
        (
            "fixed: {sensitivity: {action: melt}}",
            "fixed.sensitivity.action: expected 'none' | 'freeze' | 'boost'",
        ),
        ("fixed: {sensitivity: {topk: 2}}", "did you mean 'sensitivity.top_k'"),
        ("fixed: {checkpoint: best}", "fixed.checkpoint"),
        ("space: {ema_decay: {float: [0.9, 1.5]}}", "space.ema_decay: value 1.5 does not fit"),
        (
            "constraints: {max_param: 10}",
            "constraints.max_param: unknown constraint (did you mean 'max_params'?)",
        ),
        ("constraints: {max_params: -1}", "constraints.max_params: must be a positive number"),
    ],
)
def test_bad_recipe_keys_name_the_key(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(SweeperError) as e:
        spec.load(write(tmp_path, body))
    assert needle in str(e.value) and str(tmp_path) in str(e.value)


def test_parameter_count_needs_no_weights() -> None:
    n = model_lib.count_params_for(cfg(backbone="resnext101_32x8d", pretrained=True), 100)
    assert 86_000_000 < n < 90_000_000  # recipe 000's backbone with a 100-class head, under the 100M rule
    assert model_lib.count_params_for(cfg(), 3) == model_lib.count_params(model_lib.create(cfg(), 3))


def test_checkpoint_both_with_folds_is_refused_not_halved(tmp_path: Path) -> None:
    from sweeper.train import fit as train

    study = tmp_path / "s.yaml"
    study.write_text("data: {root: x}\nfixed: {folds: 5, checkpoint: both}\n")
    with pytest.raises(SweeperError, match="s.yaml: fixed.checkpoint: checkpoint: both keeps two epochs"):
        spec.load(str(study))
    cfg = config(folds=3, checkpoint="both")  # sampled so
    with pytest.raises(SweeperError, match="with folds, use checkpoint: val_acc"):  # the trial fails on it
        train.run_folds(cfg, None, None, metric="val_acc", device=torch.device("cpu"), checkpoint=None)
