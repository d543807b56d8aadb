"""The training losses: soft-target cross entropy and the supervised-contrastive term (recipe 002)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sweeper.train import losses


def test_soft_cross_entropy_equals_cross_entropy_on_one_hot_targets() -> None:
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(
        losses.soft_cross_entropy(logits, F.one_hot(y, 4).float()), F.cross_entropy(logits, y)
    )


def test_supcon_is_low_for_class_clusters_and_high_for_mixed_features() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    clustered = F.one_hot(labels, 3).float() * 5 + 0.01 * torch.randn(6, 3)
    crossed = clustered[[0, 2, 4, 1, 3, 5]]  # same features, each next to another class's
    assert losses.supcon(clustered, labels, 0.1) < losses.supcon(crossed, labels, 0.1)


def test_supcon_matches_its_definition() -> None:
    torch.manual_seed(0)
    f, labels, t = torch.randn(5, 8), torch.tensor([0, 0, 1, 1, 1]), 0.5
    z = F.normalize(f, dim=1)
    expected = []
    for i in range(5):
        others = [j for j in range(5) if j != i]
        denom = torch.logsumexp(torch.stack([z[i] @ z[j] / t for j in others]), 0)
        pos = [j for j in others if labels[j] == labels[i]]
        expected.append(-torch.stack([z[i] @ z[j] / t - denom for j in pos]).mean())
    torch.testing.assert_close(losses.supcon(f, labels, t), torch.stack(expected).mean())


def test_supcon_without_positive_pairs_is_zero_with_a_finite_gradient() -> None:
    f = torch.randn(3, 4, requires_grad=True)
    loss = losses.supcon(f, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(f.grad).all()
