"""Sensitive-layer analysis (recipe 000): ranking by validation gradient, then freeze or boost the top-k."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from sweeper.data import images as data_lib
from sweeper.data import loaders, tensors
from sweeper.study import spec
from sweeper.train import fit as train
from sweeper.train import model as model_lib
from sweeper.train import sensitivity
from tests.helpers.builders import tiny_config

cfg = functools.partial(tiny_config, batch_size=8, epochs=1, lr_backbone=0.05, optimizer="sgd")


def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0])) for _ in range(n)]


def test_rank_orders_backbone_tensors_by_gradient_norm_and_clears_grads() -> None:
    model = model_lib.create(cfg(), 3)
    head = model_lib.classifier_param_ids(model)
    ranked = sensitivity.rank(model, batches(), torch.device("cpu"), max_batches=2, exclude=head)
    names = [n for n, _ in ranked]
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert "fc.weight" not in names and "fc.bias" not in names  # the new head is never ranked
    assert len(names) == sum(1 for p in model.parameters() if id(p) not in head)
    assert all(p.grad is None for p in model.parameters())
    # the score is the norm of the summed gradient of the validation loss
    model.zero_grad()
    for x, y in batches():
        torch.nn.functional.cross_entropy(model.eval()(x), y, reduction="sum").backward()
    top_name, top_score = ranked[0]
    assert dict(model.named_parameters())[top_name].grad.norm().item() == torch.tensor(top_score).item()


def test_boost_gives_each_ranked_tensor_its_own_lr_and_decay() -> None:
    c = cfg(
        **{
            "sensitivity.action": "boost",
            "sensitivity.lr": [0.003, 0.0008],
            "sensitivity.weight_decay": [0.005, 0.007],
            "sensitivity.top_k": 3,
        }
    )
    own = sensitivity.own_groups(["a", "b", "c"], c.sensitivity)
    assert own == {
        "a": {"lr": 0.003, "weight_decay": 0.005},
        "b": {"lr": 0.0008, "weight_decay": 0.007},
        "c": {"lr": 0.0008, "weight_decay": 0.007},
    }  # lower ranks repeat the last value
    model = model_lib.create(c, 3)
    groups = model_lib.param_groups(
        model, c, {"layer4.0.conv1.weight": own["a"], "layer3.0.bn1.bias": own["b"]}
    )
    by_name = {g["name"]: g for g in groups}
    assert (
        by_name["layer4.0.conv1.weight"]["lr"] == 0.003
        and by_name["layer4.0.conv1.weight"]["weight_decay"] == 0.005
    )
    assert (
        by_name["layer3.0.bn1.bias"]["lr"] == 0.0008 and by_name["layer3.0.bn1.bias"]["weight_decay"] == 0.007
    )
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == sum(1 for _ in model.parameters())


@pytest.mark.slow
def test_freeze_keeps_the_top_k_tensors_bit_identical_through_training(image_folder: Path) -> None:
    data = data_lib.scan(image_folder)
    c = cfg(**{"sensitivity.action": "freeze", "sensitivity.top_k": 2, "sensitivity.batches": 2})
    torch.manual_seed(c.seed)  # fit seeds the same way: the same initial weights
    init = model_lib.create(c, 3).state_dict()
    probe_model = _seeded(c, init)
    ranked = sensitivity.rank(
        probe_model, _probe(data, c), torch.device("cpu"), 2, model_lib.classifier_param_ids(probe_model)
    )
    result = train.fit(c, data.train, data.val, data.classes)
    top = [n for n, _ in result.sensitive]
    assert top == [n for n, _ in ranked[:2]]  # the ranking fit acted on is the one of the initial model
    for name in top:
        torch.testing.assert_close(result.state_dict[name], init[name], rtol=0, atol=0)
    changed = [
        n for n in init if init[n].is_floating_point() and not torch.equal(init[n], result.state_dict[n])
    ]
    assert "fc.weight" in changed and len(changed) > 10


def _seeded(c: spec.TrialConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = model_lib.create(c, 3)
    model.load_state_dict(state)
    return model


def _probe(data: data_lib.ImageFolderData, c: spec.TrialConfig):
    from sweeper.data import augment

    model = model_lib.create(c, 3)
    dcfg = model_lib.data_config(model, c.img_size)
    ds = tensors.ImageDataset(data.val.files, data.val.labels, augment.eval_transform(dcfg, c.eval.crop_pct))
    return loaders.loader(ds, c, train=False, device=torch.device("cpu"))
