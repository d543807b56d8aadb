from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from sweeper.errors import SweeperError
from sweeper.train import model as model_lib
from tests.helpers.builders import config as cfg
from tests.helpers.builders import fake_hub_cache


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(SweeperError, match=r"unknown timm model 'resnxt50_32x4d'.*'resnext50_32x4d'"):
        model_lib.check_backbone("resnxt50_32x4d")
    model_lib.check_backbone("resnext101_32x8d.fb_swsl_ig1b_ft_in1k")  # pretrained tags are fine


def test_new_head_for_the_dataset_classes() -> None:
    m = model_lib.create(cfg(), num_classes=7)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_efficientnet"])
def test_freeze_depth_is_generic_over_stage_structures(name: str) -> None:
    m = model_lib.create(cfg(backbone=name), num_classes=3)
    stages = model_lib.stages(m)
    assert len(stages) == 4  # stride 4, 8, 16, 32 whatever the architecture calls them
    frozen = model_lib.freeze(m, 2)
    names = [n for n, _ in m.named_parameters()]
    assert any(n.startswith(stages[1] + ".") for n in frozen)
    assert not any(n.startswith(stages[2] + ".") for n in frozen)
    assert frozen == names[: len(frozen)]  # the stem and first stages, nothing later
    assert not any(p in frozen for p, _ in m.get_classifier().named_parameters(prefix="x"))


def test_frozen_tensors_and_norm_stats_unchanged_after_a_step() -> None:
    c = cfg(freeze_depth=2, optimizer="sgd", lr_backbone=0.5, lr_head=0.5)
    m = model_lib.create(c, num_classes=3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    opt = model_lib.create_optimizer(m, c)
    model_lib.train_mode(m)
    loss = torch.nn.functional.cross_entropy(m(torch.randn(8, 3, 32, 32)), torch.randint(0, 3, (8,)))
    loss.backward()
    opt.step()
    after = m.state_dict()
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    stage1_bn = [k for k in after if k.startswith("layer1.") and k.endswith("running_mean")]
    assert stage1_bn and all(torch.equal(before[k], after[k]) for k in stage1_bn)
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])


def test_freeze_depth_out_of_range() -> None:
    with pytest.raises(SweeperError, match=r"freeze_depth=9 .* 4 stages; use 0\.\.4"):
        model_lib.create(cfg(freeze_depth=9), num_classes=3)


def test_param_groups_split_head_and_decay() -> None:
    c = cfg(lr_backbone=1e-4, lr_head=1e-2, weight_decay=0.05)
    m = model_lib.create(c, num_classes=3)
    groups = model_lib.param_groups(m, c)
    head = {id(p) for p in m.get_classifier().parameters()}
    for g in groups:
        is_head = all(id(p) in head for p in g["params"])
        assert g["lr"] == (1e-2 if is_head else 1e-4)
        assert g["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in g["params"]) else 0.05)
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_lr_scale_batch_scales_by_batch_over_256() -> None:
    c = cfg(lr_backbone=1e-3, lr_head=1e-2, lr_scale_batch=True, batch_size=128)
    groups = model_lib.param_groups(model_lib.create(c, num_classes=3), c)
    assert {g["lr"] for g in groups} == {5e-4, 5e-3}


def test_pretrained_from_a_local_weights_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", pretrained=False)  # 1000-class "pretrained" weights we made
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(path))
    m = model_lib.create(cfg(weights_file=str(path)), num_classes=3)
    got = m.state_dict()
    for k, v in source.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (3, source.num_features)


def test_pretrained_unavailable_is_an_error_not_a_random_init(tmp_path: Path) -> None:
    with pytest.raises(
        SweeperError, match=r"pretrained weights for .test_resnet. are not in the Hugging Face hub cache"
    ):
        model_lib.create(cfg(pretrained=True), num_classes=3)
    with pytest.raises(SweeperError, match=r"weights_file .*missing\.safetensors does not exist"):
        model_lib.create(cfg(weights_file=str(tmp_path / "missing.safetensors")), num_classes=3)


@pytest.mark.parametrize("head", ["se", "attention"])
def test_feature_heads(head: str) -> None:
    m = model_lib.create(cfg(head=head, head_dropout=0.2, freeze_depth=4), num_classes=5)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)


def test_pretrained_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = timm.create_model("test_resnet", pretrained=False)
    monkeypatch.setenv(
        "HF_HUB_CACHE", str(fake_hub_cache(tmp_path, "timm/test_resnet.r160_in1k", source.state_dict()))
    )
    m = model_lib.create(cfg(pretrained=True), num_classes=4)
    assert torch.equal(m.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"])
