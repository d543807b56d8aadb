"""The training crop on the device: DataLoader workers cut each crop out, the device resizes the batch.

With ``device_aug`` the float math of a training pipeline runs on the device. What is left in the
workers for the default augmentation (RandomResizedCrop, flips) is the crop's resize, the costliest
per-image step once decoding is cached. When a pipeline's uint8 part is exactly that (a
RandomResizedCrop or a Resize, then flips), :class:`HostCrop` draws the crop's box and the flips in the
worker, with the transforms' own parameter code and in their order (so a seed draws the same crops
either way), and sends the box's pixels as they are; :func:`stack` packs a batch's crops end to end
into one uint8 tensor, and :class:`DeviceCrop` lays them out and resizes them all at once on the device.

The resize is torchvision's antialiased one (bilinear, or bicubic with PIL's a = -0.5), done as two
batched matrix products whose rows are the weights torch's uint8 ``interpolate(..., antialias=True)``
kernel uses, in its fixed point, with its rounding to uint8 after each pass (horizontal first). The
result is bit for bit ``torchvision.transforms.v2`` on the CPU (tests/data/test_device_crop.py: boxes
enlarged and shrunk, both flips, bilinear and bicubic), so ``device_aug`` moves the work and changes no
pixel. A box over twice the output size (a file decoded whole, outside the cache) is resized in the
worker instead, by torchvision: that bounds the batch's bytes and keeps the device's float32 sums
exact. A pipeline with any other uint8 op (color, rotation, policies) keeps its whole uint8 part in
the workers (``augment.split_for_device``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

_TAPS = {InterpolationMode.BILINEAR: 2, InterpolationMode.BICUBIC: 4}  # the filters' support at scale 1
# the largest box side the device resizes, in output sizes: float32 sums of torch's int16 fixed-point
# products (255 x 2**p x the weights' absolute sum) stay below 2**24, so exact, up to about 3x
_MOST = 2


class Crop(NamedTuple):
    """One image's crop as a worker sends it: the pixels ``[3, h, w]`` and ``[h, w, hflip, vflip]``."""

    pixels: torch.Tensor
    plan: torch.Tensor


class HostCrop:
    """The worker's part: draw a RandomResizedCrop's box (or take the whole image for a Resize) and the
    flips, exactly as those transforms draw them, and return the box's pixels with the plan.

    A box more than twice the output size on a side (a file decoded whole, outside the cache) is
    resized here, by torchvision itself, to the output size: the device would need its pixels in
    memory and float64 sums to stay exact; it then only flips it. It only reads pixels (``copies_out``),
    so a cache hands it its map, not a copy.
    """

    copies_out = True

    def __init__(self, geometry: T.RandomResizedCrop | T.Resize, flips: list[T.Transform], size: int) -> None:
        self.geometry, self.flips, self.size = geometry, flips, size

    def __call__(self, img: torch.Tensor) -> Crop:
        from torchvision.transforms.v2 import functional as F

        h, w = img.shape[-2:]
        top = left = 0
        if isinstance(self.geometry, T.RandomResizedCrop):
            box = self.geometry.make_params([img])
            top, left, h, w = box["top"], box["left"], box["height"], box["width"]
        # the flips' own draw: torchvision skips a flip when torch.rand(1) >= p
        hflip = vflip = 0
        for flip in self.flips:
            if bool(torch.rand(1) < flip.p):
                if isinstance(flip, T.RandomHorizontalFlip):
                    hflip ^= 1  # two flips undo each other
                else:
                    vflip ^= 1
        if max(h, w) <= _MOST * self.size:
            return Crop(img[:, top : top + h, left : left + w], torch.tensor([h, w, hflip, vflip]))
        s = self.size
        shrunk = F.resized_crop(img, top, left, h, w, [s, s], self.geometry.interpolation, antialias=True)
        return Crop(shrunk, torch.tensor([s, s, hflip, vflip]))

    def __repr__(self) -> str:
        return f"HostCrop({self.geometry}, {self.flips})"


def split(pipeline: T.Compose) -> tuple[HostCrop, list[Any], int, InterpolationMode] | None:
    """``pipeline``'s worker part, the ops after its uint8 part (``ToDtype`` on), its output size and
    interpolation, when its uint8 part is a crop or resize and flips the device can do; else None."""
    ops = list(pipeline.transforms)
    cut = next(i for i, op in enumerate(ops) if isinstance(op, T.ToDtype))
    head, flips = ops[0], ops[1:cut]
    if not isinstance(head, (T.RandomResizedCrop, T.Resize)) or not all(
        isinstance(f, (T.RandomHorizontalFlip, T.RandomVerticalFlip)) for f in flips
    ):
        return None
    size = list(head.size)
    if head.interpolation not in _TAPS or not head.antialias or len(set(size)) != 1:
        return None
    return HostCrop(head, flips, size[0]), ops[cut:], size[0], head.interpolation


def stack(xs: list[Any]) -> Any:
    """A batch of images: stacked tensors, or crops packed end to end into one flat uint8 tensor (each
    ``h x w x 3``, rows as decoders lay them out, so packing is a copy of whole rows) with their
    ``[B, 4]`` plans; :func:`unpack` lays them out on the device. In a DataLoader worker the packed
    batch is allocated in shared memory, as torch's own collate does, so it crosses without a copy."""
    if not isinstance(xs[0], Crop):
        return torch.utils.data.default_collate(xs)
    plans = torch.stack([c.plan for c in xs])
    total = int((plans[:, 0] * plans[:, 1]).sum()) * 3
    if torch.utils.data.get_worker_info() is not None:  # as torch's default_collate allocates
        out = xs[0].pixels.new(xs[0].pixels._typed_storage()._new_shared(total, device="cpu"))
    else:
        out = torch.empty(total, dtype=torch.uint8)
    at = 0
    for c in xs:
        h, w = c.pixels.shape[-2:]
        out[at : at + h * w * 3].view(h, w, 3).copy_(c.pixels.permute(1, 2, 0))
        at += h * w * 3
    return out, plans


def unpack(packed: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
    """The crops of :func:`stack` (``packed`` on the device, ``plans`` on the host) as one zero-padded
    ``[B, 3, H, W]`` batch, H and W the largest crop's."""
    sizes = plans[:, :2].tolist()
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    out = torch.zeros(len(sizes), height, width, 3, dtype=torch.uint8, device=packed.device)
    at = 0
    for row, (h, w) in zip(out, sizes, strict=True):
        row[:h, :w] = packed[at : at + h * w * 3].view(h, w, 3)
        at += h * w * 3
    return out.permute(0, 3, 1, 2)


def collate(items: list[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
    """``[(image or crop, label), ...]`` -> one batch: :func:`stack` and the labels."""
    return stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


def weights(sizes: torch.Tensor, out: int, interpolation: InterpolationMode, span: int) -> torch.Tensor:
    """``[B, out, span]``: row i of batch b holds the antialiased interpolation weights of output pixel i
    over input pixels ``0 .. sizes[b] - 1`` (zero beyond), as torch's uint8 ``interpolate`` computes
    them: in double precision, then rounded to multiples of ``2 ** -p`` (its int16 fixed point, ``p`` as
    large as the image's largest weight allows). Computed where ``sizes`` lives, with no host sync."""
    taps = _TAPS[interpolation]
    f64, at = torch.float64, sizes.device
    n = sizes.to(torch.float64)[:, None, None]
    scale = n / out  # input pixels per output pixel
    wide = scale >= 1  # shrinking: the filter stretches over ``scale`` input pixels
    support = torch.where(wide, scale * (taps / 2), taps / 2)
    inv = torch.where(wide, 1 / scale, 1.0)
    center = scale * (torch.arange(out, dtype=f64, device=at)[None, :, None] + 0.5)
    lo = (center - support + 0.5).trunc().clamp(min=0)
    hi = torch.minimum((center + support + 0.5).trunc(), n)
    j = torch.arange(span, dtype=f64, device=at)[None, None, :]
    x = ((j - center + 0.5) * inv).abs()
    if interpolation == InterpolationMode.BILINEAR:
        w = (1 - x).clamp(min=0)
    else:  # Keys' cubic with a = -0.5, PIL's (torch uses it whenever antialias is on)
        a = -0.5
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        w = torch.where(x < 1, near, torch.where(x < 2, far, 0.0))
    w = w * ((j >= lo) & (j < hi))
    w = w / w.sum(-1, keepdim=True)
    # the fixed point: the first p in 0..21 at which the largest weight would overflow int16 at p + 1
    grid = 2.0 ** torch.arange(1, 23, dtype=f64, device=at)
    fits = (0.5 + w.amax((1, 2))[:, None] * grid).floor() < 2**15
    one = 2.0 ** fits.sum(1).clamp(max=22)[:, None, None]  # fits holds for every p below the first miss
    q = w * one
    return (torch.where(q < 0, q - 0.5, q + 0.5).trunc() / one).float()  # C's round half away from 0


class DeviceCrop:
    """The device's part: resize a batch of crops to ``size`` x ``size``, flip, then run the rest of the
    pipeline (``ToDtype`` on) on the whole batch. Takes the batch as :func:`stack` made it (on the
    host, pinned) and moves it to ``device`` itself."""

    def __init__(self, size: int, interpolation: InterpolationMode, tail: Any, device: torch.device) -> None:
        self.size, self.interpolation, self.tail, self.device = size, interpolation, tail, device

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        packed, on_host = batch
        pixels = unpack(packed.to(self.device, non_blocking=True), on_host)
        plans = on_host.to(self.device, non_blocking=True)
        height, width = pixels.shape[-2:]
        rows = weights(plans[:, 0], self.size, self.interpolation, height)
        cols = weights(plans[:, 1], self.size, self.interpolation, width)
        # a flipped output is the same weight rows in reverse order
        rows = torch.where(plans[:, 3, None, None].bool(), rows.flip(1), rows)[:, None]
        cols = torch.where(plans[:, 2, None, None].bool(), cols.flip(1), cols)[:, None]
        # as torch's uint8 kernel: the horizontal pass first, rounded to uint8, then the vertical one
        with _full_float32(), torch.autocast(self.device.type, enabled=False):  # TF32 or bf16 would
            # round the fixed-point sums
            x = _uint8(pixels.float() @ cols.transpose(-1, -2))
            x = _uint8(rows @ x)
        return self.tail(x.to(torch.uint8))

    def __repr__(self) -> str:
        return f"DeviceCrop({self.size}, {self.interpolation.value}, {self.tail})"


def _uint8(x: torch.Tensor) -> torch.Tensor:
    """Round half up and clip to 0..255, as torch's fixed-point kernel ends each pass."""
    return (x + 0.5).floor_().clamp_(0, 255)


@contextmanager
def _full_float32() -> Iterator[None]:
    """float32 matrix products in full precision (setup_model allows TF32 on CUDA for the model)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
