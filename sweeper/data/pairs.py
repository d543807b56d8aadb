"""Partners drawn from the whole training set: every image comes with a second one, of its class with a
set probability, each augmented on its own (recipe 002's contrastive dataset).

A batch of B images becomes 2B rows, interleaved ``[image 0, partner 0, image 1, partner 1, ...]``, with
both labels; whether a pair shares a class is read from the labels, so nothing else travels. Interleaving
keeps pairs together when a batch is cut into micro-batches of an even size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sweeper.data import device_crop


class PartnerDataset(torch.utils.data.Dataset):
    """An image dataset whose item ``i`` is image ``i`` and a partner drawn anew at every access.

    The partner shares ``i``'s class with probability ``same_class`` (another image of that class; ``i``
    itself when it is its class's only image), else it is uniform over the images of other classes
    (where there are none, it is of ``i``'s class). Draws use torch's generator, so a DataLoader's
    seeding makes them reproducible in the main process and in workers alike.
    """

    def __init__(
        self, images: torch.utils.data.Dataset[Any], labels: Sequence[int], same_class: float
    ) -> None:
        self.images, self.same_class = images, same_class
        self.labels = torch.as_tensor(list(labels))
        self.by_class = {int(c): (self.labels == c).nonzero().flatten() for c in self.labels.unique()}

    def __len__(self) -> int:
        return len(self.labels)

    def partner(self, i: int) -> int:
        """The index of ``i``'s partner (one draw)."""
        own = self.by_class[int(self.labels[i])]
        others = len(self.labels) - len(own)
        if others == 0 or float(torch.rand(())) < self.same_class:
            if len(own) == 1:
                return i
            j = int(own[torch.randint(len(own) - 1, ())])
            return j if j != i else int(own[-1])  # uniform over the class without i
        while True:  # rejection: uniform over the other classes' images
            j = int(torch.randint(len(self.labels), ()))
            if self.labels[j] != self.labels[i]:
                return j

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int]]:
        j = self.partner(i)
        (x, y), (xp, yp) = self.images[i], self.images[j]
        return (x, xp), (y, yp)


def collate(items: list[tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int]]]) -> tuple[Any, Any]:
    """``[(image, partner), ...]`` -> one batch of 2B images, pairs interleaved, and their 2B labels."""
    xs = [x for (pair, _) in items for x in pair]
    ys = [y for (_, labels) in items for y in labels]
    return device_crop.stack(xs), torch.as_tensor(ys)
