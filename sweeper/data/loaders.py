"""Where a run's tensors come from and live: the device, DataLoader workers, batches on the device in the
chosen memory format, the per-image pipelines and the decoded-image cache they read."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeper.data import augment, device_crop, pairs, tensors
from sweeper.data import images as data_lib
from sweeper.data.workers import cores, worker_context
from sweeper.servable import network
from sweeper.study.config import TrialConfig


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_workers() -> int:
    """DataLoader workers from the machine's cores: leave one core for the training loop."""
    return max(0, min(8, cores() - 1))


def workers(cfg: TrialConfig) -> int:
    return cfg.num_workers if cfg.num_workers is not None else default_workers()


def build_workers(cfg: TrialConfig) -> int:
    """Processes that decode a cache build: every core (up to 32), as nothing trains meanwhile and the
    main process only counts; ``num_workers`` where a study sets it (0: decode in this process)."""
    return cfg.num_workers if cfg.num_workers is not None else min(32, cores())


def use_channels_last(cfg: TrialConfig, device: torch.device) -> bool:
    """``true``/``false`` as asked; ``auto`` = on CUDA unless the model is known to slow down in NHWC."""
    return network.channels_last(cfg.channels_last, cfg.backbone, device)


def setup_model(model: nn.Module, cfg: TrialConfig, device: torch.device) -> nn.Module:
    """Move the model to ``device`` in the chosen memory format, set the CUDA fast paths, compile if asked."""
    model.to(device)
    if use_channels_last(cfg, device):
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32
    if cfg.compile:
        model.compile()  # in place: state_dict keys stay those of the plain model
    return model


class DeviceLoader:
    """A DataLoader whose batches arrive on the device: pinned non-blocking copies, the chosen memory
    format, and the device part of the transform (``device_aug``) already applied.

    It clocks what the loop waits for: ``waited`` adds up the seconds spent blocked in the DataLoader's
    ``next()`` (starting its workers included), and ``first_batch_at`` is the ``perf_counter`` time its
    first batch ever arrived. Two clock reads a batch, no device synchronization: on CUDA the loop may
    still have kernels queued while it waits, so ``waited`` bounds the GPU's idle time from above.
    """

    def __init__(
        self,
        dl: torch.utils.data.DataLoader,
        device: torch.device,
        channels_last: bool,
        tail: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        self.dl, self.device, self.channels_last, self.tail = dl, device, channels_last, tail
        self.dataset = dl.dataset
        self.waited = 0.0  # seconds blocked on the DataLoader; the caller resets it per epoch
        self.first_batch_at: float | None = None

    def __len__(self) -> int:
        return len(self.dl)

    def _batches(self) -> Iterator[tuple[Any, torch.Tensor]]:
        t = time.perf_counter()
        it = iter(self.dl)  # the first epoch's starts the workers: waiting too
        while True:
            try:
                batch = next(it)
            except StopIteration:
                self.waited += time.perf_counter() - t
                return
            now = time.perf_counter()
            self.waited += now - t
            if self.first_batch_at is None:
                self.first_batch_at = now
            yield batch
            t = time.perf_counter()

    def __iter__(self):
        for x, y in self._batches():
            y = y.to(self.device, non_blocking=True)
            if isinstance(x, torch.Tensor):  # else a batch of crops, which its tail moves
                x = x.to(self.device, non_blocking=True)
            if self.tail is not None:
                x = self.tail(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def loader(
    ds: torch.utils.data.Dataset,
    cfg: TrialConfig,
    train: bool,
    device: torch.device,
    seed: int | None = None,
    tail: Callable[[Any], torch.Tensor] | None = None,
) -> DeviceLoader:
    """Batches of ``ds`` on ``device``; a training loader shuffles with its own generator (``seed``,
    default cfg.seed). ``tail`` is the device part of a transform (``Pipelines``: a device crop's resize,
    or the float ops ``augment.split_for_device`` leaves); batches of crops are packed by
    ``device_crop.collate``, other batches stacked as torch's default collate does."""
    n = workers(cfg)
    partners = train and cfg.cosine_partners == "dataset"
    if partners:  # every image with a partner from the whole set: batches of 2 x batch_size, interleaved
        ds = pairs.PartnerDataset(ds, ds.labels, cfg.cosine_same_class)  # type: ignore[attr-defined]
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=train,
        collate_fn=pairs.collate if partners else device_crop.collate,
        # a tiny last batch adds noise to BatchNorm; drop_last false keeps it, as torch's default
        drop_last=cfg.drop_last and train and len(ds) > cfg.batch_size,  # type: ignore[arg-type]
        num_workers=n,
        multiprocessing_context=worker_context(n),
        persistent_workers=n > 0,
        prefetch_factor=max(2, 8 // n) if n else None,  # ~8 batches in flight whatever the worker count
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed if seed is None else seed) if train else None,
    )
    return DeviceLoader(dl, device, use_channels_last(cfg, device), tail)


class Pipelines:
    """The per-image transforms of a run, their device tails, and the decoded-image caches they read.

    Two caches, built in one decoding pass: for training, every file of ``splits`` (sorted, so the
    folds of a k-fold trial and a refit on train+val share the trials' cache) shrunk to the short side
    the random crops use (see :mod:`sweeper.data.cache`); for evaluation, the files of ``evaluated``
    (default: all of ``splits``) as the eval transform's geometry leaves them
    (:class:`augment.EvalCrop`), so validation and hold-out pixels are exactly those ``predict``
    computes from the files. An image read outside its cache is decoded from its file. ``progress``
    is called as ``progress(done, total)`` while a cache is built.
    """

    def __init__(
        self,
        cfg: TrialConfig,
        dcfg: dict[str, Any],
        device: torch.device,
        *splits: data_lib.Split | None,
        evaluated: tuple[data_lib.Split | None, ...] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        from sweeper.data import cache

        self.train_tf: Any = augment.train_transform(cfg.aug, dcfg, cfg.normalize)
        self.eval_tf: Any = augment.eval_transform(dcfg, cfg.eval, cfg.normalize)
        self.eval_cached_tf: Any = augment.after_eval_crop(dcfg, cfg.normalize)
        evaluated = splits if evaluated is None else evaluated
        size, aug = dcfg["input_size"][-1], cfg.aug
        short = (
            max(size, math.ceil(cfg.cache_scale * size))
            if cfg.cache_scale is not None
            else cache.train_short_side(size, aug.rrc_scale if aug.rrc else None, aug.rrc_ratio)
        )
        shrink = cache.ShrinkShortSide(short, augment.interpolation(dcfg))
        crop = augment.EvalCrop(dcfg, cfg.eval)  # first: the budget goes to the exact eval pixels first
        versions = {s.version for s in splits if s is not None}  # one scan's: no file statted again
        self.eval_images, self.images = cache.open_caches(
            [(_files(*evaluated), crop), (_files(*splits), shrink)],
            workers=build_workers(cfg),
            version=versions.pop() if len(versions) == 1 else "",
            progress=progress,  # a build's (done, total); None: this process's meter (sweeper.meter)
        )
        self.train_tail: Callable[[Any], torch.Tensor] | None = None
        self.eval_tail: Callable[[Any], torch.Tensor] | None = None
        if cfg.device_aug is True or (cfg.device_aug == "auto" and device.type == "cuda"):
            self.train_tf, self.train_tail = _split_train(self.train_tf, device)
            self.eval_tf, self.eval_tail = augment.split_for_device(self.eval_tf)
            self.eval_cached_tf, _ = augment.split_for_device(self.eval_cached_tf)

    def train(self, split: data_lib.Split) -> tensors.ImageDataset:
        return tensors.ImageDataset(split.files, split.labels, self.train_tf, self.images)

    def eval(self, split: data_lib.Split) -> tensors.ImageDataset:
        """``split`` as ``predict`` sees it: the eval crop from its cache, else decoded and cropped."""
        return tensors.ImageDataset(
            split.files, split.labels, self.eval_tf, self.eval_images, self.eval_cached_tf
        )

    def eval_loader(self, split: data_lib.Split, cfg: TrialConfig, device: torch.device) -> DeviceLoader:
        return loader(self.eval(split), cfg, train=False, device=device, tail=self.eval_tail)


def _split_train(pipeline: Any, device: torch.device) -> tuple[Any, Callable[[Any], torch.Tensor]]:
    """A training pipeline's worker part and device part: only the crop's box and flips drawn in the
    workers when the device can do the rest (:mod:`sweeper.data.device_crop`), else every uint8 op."""
    cut = device_crop.split(pipeline)
    if cut is None:
        return augment.split_for_device(pipeline)
    host, rest, size, interpolation = cut
    return host, device_crop.DeviceCrop(size, interpolation, augment.BatchTail(rest), device)


def _files(*splits: data_lib.Split | None) -> list[Path]:
    return sorted({f for s in splits if s is not None for f in s.files})


autocast = network.autocast  # one autocast for training, evaluation and the served model


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """torch's GradScaler for fp16 (its loss scaling keeps small float16 gradients from flushing to
    zero); None for bf16, whose range needs none.

    Raises:
        SweeperError: fp16 on a device this torch has no GradScaler for.
    """
    if precision != "fp16":
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (RuntimeError, TypeError, ValueError) as e:
        from sweeper.errors import SweeperError

        raise SweeperError(
            f"precision: fp16 needs a GradScaler on {device.type}, which this torch lacks ({e})"
        ) from None


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True)  # a no-op for DeviceLoader batches, already there
