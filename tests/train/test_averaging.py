"""Weight averaging (recipe 004, model soups): merged replicas, EMA and greedy soups average for real."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweeper.train import averaging


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_average_is_the_elementwise_mean_and_keeps_integer_buffers() -> None:
    a, b, c = net(0).state_dict(), net(1).state_dict(), net(2).state_dict()
    c["1.num_batches_tracked"] = torch.tensor(7)
    avg = averaging.average_state_dicts([c, a, b])
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(avg[k], (a[k] + b[k] + c[k]) / 3)
    assert avg["1.num_batches_tracked"].item() == 7  # from the first, not averaged


def test_different_architectures_are_refused() -> None:
    with pytest.raises(ValueError, match="different architectures"):
        averaging.average_state_dicts([net(0).state_dict(), nn.Linear(3, 4).state_dict()])


def test_periodic_merge_makes_every_replica_the_average() -> None:
    models = [net(0), net(1)]
    expected = averaging.average_state_dicts([m.state_dict() for m in models])
    averaging.merge(models)
    for m in models:
        for k, v in m.state_dict().items():
            torch.testing.assert_close(v, expected[k])


def test_ema_follows_the_model_with_its_decay() -> None:
    model = net(0)
    ema = averaging.ema(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=10_000)  # past the warmup: the decay is the cap, 0.5
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(ema.module.state_dict()[k], 0.5 * before[k] + 0.5 * v)
    ema.update(model, step=1)  # the first step copies the model (no stale init in short runs)
    torch.testing.assert_close(ema.module.state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_greedy_soup_keeps_only_candidates_that_do_not_hurt() -> None:
    states = [{"w": torch.tensor([v])} for v in (1.1, 0.9, 5.0, 1.3)]  # sorted best first by their own score

    def score(s: dict[str, torch.Tensor]) -> float:  # validation accuracy stand-in, best at w = 1
        return -abs(float(s["w"]) - 1.0)

    kept, soup, value = averaging.greedy_soup(states, score)
    assert kept == [0, 1]  # 1.1 + 0.9 -> 1.0 helps; adding 5.0 or 1.3 would move the average away
    torch.testing.assert_close(soup["w"], torch.tensor([1.0]))  # the soup is the plain average of those kept
    assert value == pytest.approx(0.0)
