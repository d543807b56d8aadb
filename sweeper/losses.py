"""Training losses: cross entropy on hard or soft (mixed, smoothed) targets, and supervised contrastive.

The supervised-contrastive term (Khosla et al. 2020) pulls together the pooled features of images of one
class within a batch and pushes apart the others; it is added to the classification loss with a weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross entropy against a probability vector per row (MixUp/CutMix targets, smoothing included)."""
    return torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean()


def supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss of L2-normalised features; anchors without a positive are skipped.

    Every image is an anchor; its positives are the other images of its class in the batch, and the
    loss is the mean negative log-probability of a positive among all other images. A batch where no
    two images share a class gives 0 (with a gradient of zero), not NaN.
    """
    z = F.normalize(features.float(), dim=1)
    sim = z @ z.T / temperature
    n = len(z)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positives.sum(1)
    has_pos = n_pos > 0
    if not has_pos.any():
        return features.sum() * 0.0
    per_anchor = -log_prob.masked_fill(~positives, 0.0).sum(1)[has_pos] / n_pos[has_pos]
    return per_anchor.mean()
