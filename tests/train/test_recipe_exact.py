"""The knobs that let the recipes run exactly as their authors ran them (issue 24), each compared with
torch's, torchvision's or timm's own result: an optimizer over named tensors with per-tensor LR, weight
decay and gradient clipping; frozen tensors whose BatchNorms still train; train/eval and rotation
interpolation; fp16 with a GradScaler; partners drawn from the whole dataset; the last partial batch.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from sweeper.data import augment, loaders, pairs
from sweeper.errors import SweeperError
from sweeper.study import spec
from sweeper.train import fit as train
from sweeper.train import losses, runs, schedules
from sweeper.train import model as model_lib

CPU = torch.device("cpu")
# test_resnet's stand-ins for 000's two tensors: ones with a gradient at init (timm zero-initialises
# each block's last norm, so the convs inside a block get none)
TWO = ("layer4.0.downsample.1.weight", "layer3.0.downsample.1.weight")


def cfg(**kw) -> spec.TrialConfig:
    return spec.build_config({"backbone": "test_resnet", "img_size": 16, "num_workers": 0, **kw})


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.arange(n) % 3


def train_steps(c: spec.TrialConfig, model: torch.nn.Module, steps: int, scaler=None) -> None:
    """``steps`` optimizer steps of sweeper's own loop (its groups, schedule, clipping, scaler)."""
    own = train._boosted(model, c)
    opt = model_lib.create_optimizer(model, c, model_lib.param_groups(model, c, own))
    sched = schedules.create(opt, c, steps)
    batches = [batch(seed=i) for i in range(steps)]
    runs.train_epoch(model, opt, sched, batches, c, None, CPU, scaler=scaler)


# ---- an optimizer over named tensors, per-tensor LR / weight decay / clipping (recipe 000's boost) ------


BOOST = {
    "optimizer": "adamw",
    "opt_eps": 1e-5,
    "lr_schedule": "constant",
    "warmup_epochs": 0,
    "train_only": TWO,
    "boost": TWO,
    "sensitivity.lr": (1e-3, 8e-4),
    "sensitivity.weight_decay": (0.005, 0.007),
    "grad_clip": 2.0,
    "grad_clip_tensors": (TWO[0],),
    "freeze_bn_stats": False,
}


def test_named_tensor_optimizer_matches_torchs_adamw_over_those_tensors_with_one_clipped() -> None:
    """000's 7.py: AdamW([{conv1, 1e-3, wd 0.005}, {conv3, 8e-4, wd 0.007}], eps=1e-5), the first
    tensor's gradient clipped at 2.0, model.train(); sweeper's boost cell must give the same weights and
    the same BatchNorm statistics after a few steps."""
    torch.manual_seed(0)
    ours = model_lib.create(cfg(**BOOST), 3)
    torch.manual_seed(0)
    ref = model_lib.create(cfg(), 3)
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())
    p = dict(ref.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p[TWO[0]]], "lr": 1e-3, "weight_decay": 0.005},
            {"params": [p[TWO[1]]], "lr": 8e-4, "weight_decay": 0.007},
        ],
        eps=1e-5,
    )
    ref.train()
    for i in range(3):
        x, y = batch(seed=i)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        torch.nn.utils.clip_grad_norm_(ref.layer4[0].downsample[1].parameters(), max_norm=2.0)
        opt.step()
    train_steps(cfg(**BOOST), ours, 3)
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())  # weights and BatchNorm buffers
    assert {n for n, q in ours.named_parameters() if q.requires_grad} == set(TWO)


def test_per_tensor_clipping_is_torchs_clip_grad_norm_on_that_tensor_alone() -> None:
    model = model_lib.create(cfg(), 3)
    x, y = batch()
    (100 * torch.nn.functional.cross_entropy(model(x), y)).backward()  # gradients far above the norm
    ref = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
    alone = torch.nn.Parameter(torch.zeros_like(ref[TWO[0]]))
    alone.grad = ref[TWO[0]]
    torch.nn.utils.clip_grad_norm_(alone, 2.0)  # torch's clipping of that one tensor (in place)
    model_lib.clip_gradients(model, 2.0, (TWO[0],))
    grads = {n: q.grad for n, q in model.named_parameters() if q.grad is not None}
    torch.testing.assert_close(grads, ref)
    assert float(grads[TWO[0]].norm()) == pytest.approx(2.0, rel=1e-4)
    assert float(grads[TWO[1]].norm()) > 2.0  # the other tensor is left as it is


def test_train_only_pattern_that_matches_nothing_is_an_error_naming_the_key() -> None:
    with pytest.raises(SweeperError, match=r"train_only: pattern 'layer9\.\*' matches no parameter"):
        model_lib.create(cfg(train_only=("layer9.*",)), 3)


# ---- the stem out of the optimizer, its BatchNorms still training (recipe 004) ------------------------


@pytest.mark.parametrize("bn_stats_frozen", [True, False])
def test_a_frozen_stems_batchnorm_statistics_follow_freeze_bn_stats(bn_stats_frozen: bool) -> None:
    c = cfg(freeze_stem=True, freeze_bn_stats=bn_stats_frozen, optimizer="sgd", lr_schedule="constant")
    torch.manual_seed(0)
    model = model_lib.create(c, 3)
    ref = copy.deepcopy(model)
    ref.train()
    with torch.no_grad():
        ref(batch()[0])  # torch's own model.train() forward: every BatchNorm updates its statistics
    before = copy.deepcopy(model.bn1.state_dict())
    train_steps(c, model, 1)
    assert torch.equal(model.bn1.weight, before["weight"])  # stem weights: out of the optimizer
    if bn_stats_frozen:
        assert torch.equal(model.bn1.running_mean, before["running_mean"])
    else:
        torch.testing.assert_close(model.bn1.state_dict(), ref.bn1.state_dict())


# ---- interpolation: train/eval resize and rotation -----------------------------------------------------


def test_interpolation_replaces_the_models_for_training_and_eval_like_torchvisions_resize() -> None:
    model = model_lib.create(cfg(backbone="test_resnet"), 3)
    bicubic = {**model_lib.data_config(model, 20), "interpolation": "bicubic"}
    model.pretrained_cfg = {**model.pretrained_cfg, "interpolation": "bicubic"}
    assert model_lib.data_config(model, 20)["interpolation"] == "bicubic"  # the model's, by default
    dcfg = model_lib.data_config(model, 20, "bilinear")
    assert dcfg["interpolation"] == "bilinear"
    rrc = augment.train_transform(spec.AugConfig(), dcfg).transforms[0]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.interpolation == InterpolationMode.BILINEAR
    img = torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8)
    ev = spec.EvalConfig(crop_pct=0.625)  # 004: Resize(512), CenterCrop(320), scaled to 32 / 20
    ours = augment.eval_transform(dcfg, ev, normalize=False)(img)
    torchvisions = T.Compose([T.Resize(32), T.CenterCrop(20), T.ToDtype(torch.float32, scale=True)])
    # timm's eval resize (torchvision's v1 op on floats) and v2's uint8 fast path round apart by <= 1/255
    torch.testing.assert_close(ours, torchvisions(img), atol=1 / 255 + 1e-6, rtol=0)
    cubic = augment.eval_transform(bicubic, ev, normalize=False)(img)
    assert float((cubic - ours).abs().max()) > 4 / 255


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_rotation_is_torchvisions_random_rotation_with_its_interpolation(mode: str) -> None:
    aug = spec.AugConfig(rrc=False, hflip=False, rotation=True, rotation_deg=30, rotation_interpolation=mode)
    dcfg = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(3)
    ours = augment.train_transform(aug, dcfg, normalize=False)(img)
    torch.manual_seed(3)
    interp = InterpolationMode.NEAREST if mode == "nearest" else InterpolationMode.BILINEAR
    rotation = T.RandomRotation(30) if mode == "nearest" else T.RandomRotation(30, interpolation=interp)
    theirs = T.Compose([rotation, T.ToDtype(torch.float32, scale=True)])(img)  # default: nearest
    torch.testing.assert_close(ours, theirs)


# ---- fp16 with a gradient scaler -----------------------------------------------------------------------


def _fp16_step_matches_torchs_amp_recipe(device: torch.device) -> None:
    c = cfg(
        precision="fp16",
        optimizer="sgd",
        lr_schedule="constant",
        grad_clip=1.0,
        lr_backbone=0.1,
        warmup_epochs=0,
    )
    torch.manual_seed(0)
    ours = model_lib.create(c, 3).to(device)
    ref = copy.deepcopy(ours)
    scaler = loaders.grad_scaler(c.precision, device)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    own = train._boosted(ours, c)
    opt = model_lib.create_optimizer(ours, c, model_lib.param_groups(ours, c, own))
    x, y = batch()
    x, y = x.to(device), y.to(device)
    runs.train_epoch(ours, opt, schedules.create(opt, c, 1), [(x, y)], c, None, device, scaler=scaler)
    ref_opt = model_lib.create_optimizer(ref, c, model_lib.param_groups(ref, c, own))
    ref_scaler = torch.amp.GradScaler(device.type)
    ref.train()
    with loaders.autocast(device, "fp16"):
        loss = torch.nn.functional.cross_entropy(ref(x).float(), y)
    ref_scaler.scale(loss).backward()  # torch's AMP recipe: scale, unscale, clip, step, update
    ref_scaler.unscale_(ref_opt)
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    ref_scaler.step(ref_opt)
    ref_scaler.update()
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())
    assert scaler.get_scale() == ref_scaler.get_scale()


def test_fp16_step_is_torchs_amp_recipe_with_a_grad_scaler_on_the_cpu() -> None:
    _fp16_step_matches_torchs_amp_recipe(CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA fp16 path needs a GPU")
def test_fp16_step_is_torchs_amp_recipe_on_cuda() -> None:
    with loaders.autocast(torch.device("cuda"), "fp16"):
        assert torch.get_autocast_dtype("cuda") == torch.float16
    _fp16_step_matches_torchs_amp_recipe(torch.device("cuda"))


def test_bf16_needs_no_scaler_and_a_bad_precision_is_refused_naming_the_key() -> None:
    assert loaders.grad_scaler("bf16", CPU) is None
    with pytest.raises(SweeperError, match=r"--set precision='fp32': expected 'bf16' \| 'fp16'"):
        spec.load("recipe-004").with_overrides({"precision": "fp32"})


# ---- partners from the whole dataset (recipe 002's contrastive run) ------------------------------------


class Noisy(torch.utils.data.Dataset):
    """Image i is the constant i plus fresh noise at every access: a random augmentation."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 2, 2), float(i)) + 0.01 * torch.rand(1, 2, 2), self.labels[i]


def test_partners_share_the_class_at_the_asked_rate_and_are_never_the_image_itself() -> None:
    labels = [i % 10 for i in range(200)]
    ds = pairs.PartnerDataset(Noisy(labels), labels, same_class=0.5)
    torch.manual_seed(0)
    drawn = [(i, ds.partner(i)) for i in range(200) for _ in range(10)]
    same = sum(labels[i] == labels[j] for i, j in drawn) / len(drawn)
    assert 0.47 < same < 0.53 and all(i != j for i, j in drawn)
    assert len({j for i, j in drawn if labels[j] != labels[i]}) > 150  # from the whole set, not a batch
    lonely = pairs.PartnerDataset(Noisy([0, 1, 1]), [0, 1, 1], same_class=1.0)
    assert lonely.partner(0) == 0  # 002's fallback: the image itself when its class has no other


def test_partner_batches_interleave_images_and_independently_augmented_partners() -> None:
    labels = [0, 0, 1, 1, 2, 2, 3, 3, 4]
    c = cfg(cosine_partners="dataset", cosine_weight=15.0, batch_size=4, drop_last=False)
    dl = loaders.loader(Noisy(labels), c, train=True, device=CPU)
    got = list(dl)
    assert [len(x) for x, _ in got] == [8, 8, 2]  # 4 images + 4 partners a step; the last one kept
    for x, y in got:  # every row carries its own image's label, partners included
        assert [labels[int(v.mean().round())] for v in x] == y.tolist()
    (x, xp), (y, yp) = pairs.PartnerDataset(Noisy([0]), [0], 0.5)[0]  # its own partner, drawn twice:
    assert y == yp and not torch.equal(x, xp)  # the same image, augmented on its own


def test_partner_loss_is_002s_two_cross_entropies_plus_torchs_cosine_embedding_loss() -> None:
    torch.manual_seed(0)
    feats, logits, y = torch.randn(8, 6), torch.randn(8, 3), torch.tensor([0, 0, 1, 2, 2, 2, 1, 0])
    ours = losses.partner_loss(feats, logits, y, losses.Pairs(15.0, 0.2, partner_ce=True))
    ce = torch.nn.CrossEntropyLoss()
    target = torch.where(y[0::2] == y[1::2], 1.0, -1.0)
    cos = torch.nn.CosineEmbeddingLoss(margin=0.2)(feats[0::2], feats[1::2], target)
    torch.testing.assert_close(ours, ce(logits[0::2], y[0::2]) + ce(logits[1::2], y[1::2]) + 15 * cos)
    alone = losses.partner_loss(feats, logits, y, losses.Pairs(15.0, 0.2, partner_ce=False))
    torch.testing.assert_close(alone, ce(logits[0::2], y[0::2]) + 15 * cos)
    assert runs.micro_slices(8, 3, multiple=2) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cosine_partner_ce", True, "cosine_partner_ce: needs cosine_partners: dataset"),
        ("grad_clip_tensors", ["fc.weight"], r"grad_clip_tensors: needs grad_clip"),
    ],
)
def test_settings_that_need_another_are_refused_in_one_line(key: str, value: object, message: str) -> None:
    study = spec.load("recipe-001").with_overrides({key: value})
    with pytest.raises(SweeperError, match=message):
        study.resolve({"backbone": "resnet50.tv_in1k"})


def test_a_same_class_rate_out_of_range_names_the_key() -> None:
    with pytest.raises(SweeperError, match=r"--set cosine_same_class=1\.5: must be in \[0, 1\]"):
        spec.load("recipe-002").with_overrides({"cosine_same_class": 1.5})


# ---- the last partial batch ------------------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [True, False])
def test_drop_last_gives_torchs_dataloader_batches(drop_last: bool) -> None:
    ds = Noisy(list(range(10)))
    ours = loaders.loader(ds, cfg(batch_size=4, drop_last=drop_last), train=True, device=CPU)
    torchs = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, drop_last=drop_last)
    assert [len(y) for _, y in ours] == [len(y) for _, y in torchs] == ([4, 4] if drop_last else [4, 4, 2])
