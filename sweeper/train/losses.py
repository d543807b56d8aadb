"""Training losses: cross entropy on hard or soft (mixed, smoothed) targets, supervised contrastive and
pairwise cosine embedding.

The supervised-contrastive term (Khosla et al. 2020) pulls together the pooled features of images of one
class within a batch and pushes apart the others; it is added to the classification loss with a weight.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def sample_pairs(
    labels: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A partner in the batch for every image, of its class with probability 1/2, else of another.

    Returns the partners' indices and the targets (+1 same class, -1 not). Where the batch has no other
    image of the wanted kind the other kind is taken, so in a batch of many classes fewer than half the
    pairs share a class (recipe 002 drew partners from the whole dataset).
    """
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    same_other = same & ~eye
    want_same = torch.rand(n, generator=generator).to(labels.device) < 0.5
    pool = torch.where(want_same[:, None], same_other, ~same)
    pool = torch.where(pool.any(1, keepdim=True), pool, same_other | ~same)  # the other kind
    pool = pool | (eye & ~pool.any(1, keepdim=True))  # a batch of one: itself
    j = torch.multinomial(pool.float().cpu(), 1, generator=generator).squeeze(1).to(labels.device)
    target = torch.where(same[torch.arange(n, device=labels.device), j], 1, -1)
    return j, target


def cosine_embedding(
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """torch's cosine-embedding loss over :func:`sample_pairs`: ``1 - cos`` for a same-class pair,
    ``max(0, cos - margin)`` for a different-class one (recipe 002's contrastive variant)."""
    j, target = sample_pairs(labels, generator)
    f = features.float()
    return F.cosine_embedding_loss(f, f[j], target, margin=margin)


@dataclass(frozen=True)
class Pairs:
    """The loss over images and their dataset-drawn partners (``cosine_partners: dataset``)."""

    weight: float  # of the cosine-embedding term; 0 = cross entropy alone
    margin: float  # torch's CosineEmbeddingLoss margin for different-class pairs
    partner_ce: bool  # add the partners' cross entropy (recipe 002: loss1 + loss2 + contrastive)
    label_smoothing: float = 0.0


def partner_loss(
    features: torch.Tensor | None, logits: torch.Tensor, labels: torch.Tensor, pairs: Pairs
) -> torch.Tensor:
    """Rows interleave images and partners (``sweeper.data.pairs``): cross entropy on the images (and
    the partners'), plus torch's cosine-embedding loss of each image's features against its partner's,
    +1 where the two share a class and -1 where not."""
    loss = F.cross_entropy(logits[0::2].float(), labels[0::2], label_smoothing=pairs.label_smoothing)
    if pairs.partner_ce:
        loss = loss + F.cross_entropy(
            logits[1::2].float(), labels[1::2], label_smoothing=pairs.label_smoothing
        )
    if features is not None and pairs.weight > 0:
        f = features.float()
        target = torch.where(labels[0::2] == labels[1::2], 1, -1)
        loss = loss + pairs.weight * F.cosine_embedding_loss(f[0::2], f[1::2], target, margin=pairs.margin)
    return loss
