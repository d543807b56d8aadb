"""Image files as torch tensors: the decoder every pipeline reads and the Dataset over a split's files.

Apart from :mod:`sweeper.data.images` (folders, splits, checks: numpy and PIL only), so commands that
read a study's record and never touch a tensor do not load torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from sweeper.data.images import decode_rgb


def load_image(path: Path) -> torch.Tensor:
    """Decode one file to a uint8 ``[3, H, W]`` RGB tensor, upright (EXIF orientation applied)."""
    return torch.from_numpy(decode_rgb(path)).permute(2, 0, 1)


class ImageDataset(torch.utils.data.Dataset):
    """Files (and labels) -> transformed tensors. Labels are -1 for unlabelled test images.

    With ``images`` (a decoded-image cache, see :mod:`sweeper.data.cache`) a file's pixels come from the
    cache instead of its decoder, then go through ``cached_transform`` (default ``transform``: the cache
    holds pixels from earlier in the pipeline, e.g. the eval crop); files the cache does not hold are
    decoded and go through ``transform``. A transform marked ``copies_out`` (it only copies pixels out,
    never writes them) reads the cache in place instead of a copy.
    """

    def __init__(
        self,
        files: tuple[Path, ...],
        labels: tuple[int, ...] | None,
        transform,
        images: Mapping[Path, torch.Tensor] | None = None,
        cached_transform=None,
    ) -> None:
        self.files, self.transform, self.images = files, transform, images
        self.cached_transform = transform if cached_transform is None else cached_transform
        self.labels = labels if labels is not None else (-1,) * len(files)
        # a transform that only copies pixels out reads the cache's map, not a copy of it
        self.in_place = getattr(self.cached_transform, "copies_out", False) and hasattr(images, "view")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        f = self.files[i]
        if self.images is not None and f in self.images:
            pixels = self.images.view(f) if self.in_place else self.images[f]  # type: ignore[attr-defined]
            return self.cached_transform(pixels), self.labels[i]
        return self.transform(load_image(f)), self.labels[i]
