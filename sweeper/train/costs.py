"""What a model costs, measured before it trains: parameters, multiply-accumulates and latency.

``num_params`` and ``gmacs`` are counted on PyTorch's meta device (no weights allocated or loaded, so
milliseconds even for a 100M-parameter model); ``gmacs`` is half the FLOPs PyTorch's FlopCounterMode
counts for one image at the trial's input size. ``latency_ms`` is timed in the trial's own process, on its
device and memory format, in eval mode with the autocast inference uses: the median of repeated forward
passes at batch 1 (the objective) and at the trial's batch size (``latency_ms_batch``, per batch; the
micro-batch when the trial accumulates gradients).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from sweeper.study.config import TrialConfig

WARMUP = 3  # forward passes before timing (cuDNN picks its kernels, caches fill)
REPEATS = 10  # timed passes at batch 1; the median is kept
BATCH_REPEATS = 5  # timed passes at the study's batch size


def _bare(cfg: TrialConfig) -> TrialConfig:
    """The architecture alone: costs do not depend on the weights, so nothing is loaded."""
    return dataclasses.replace(cfg, pretrained=False, weights_file=None, freeze_depth=0, compile=False)


def input_size(model: torch.nn.Module, cfg: TrialConfig) -> tuple[int, int, int]:
    from sweeper.train import model as model_lib

    c, h, w = model_lib.data_config(model, cfg.img_size)["input_size"]
    return int(c), int(h), int(w)


def counted(cfg: TrialConfig, num_classes: int, names: tuple[str, ...]) -> dict[str, float]:
    """``num_params`` and ``gmacs`` (those of ``names``), on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from sweeper.train import model as model_lib

    out: dict[str, float] = {}
    with torch.device("meta"):
        model = model_lib.create(_bare(cfg), num_classes)
    if "num_params" in names:
        out["num_params"] = float(model_lib.count_params(model))
    if "gmacs" in names:
        model.eval()
        with torch.device("meta"):
            x = torch.empty(1, *input_size(model, cfg))
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            model(x)
        out["gmacs"] = flops.get_total_flops() / 2 / 1e9
    return out


def latency(cfg: TrialConfig, num_classes: int, device: torch.device) -> dict[str, float]:
    """Median forward time (ms) at batch 1 and at ``cfg.batch_size``, as the trial's model would infer."""
    from sweeper.data import loaders
    from sweeper.train import model as model_lib

    torch.manual_seed(0)
    model = model_lib.create(_bare(cfg), num_classes).eval()
    shape = input_size(model, cfg)
    loaders.setup_model(model, dataclasses.replace(cfg, compile=False), device)
    fmt = torch.channels_last if loaders.use_channels_last(cfg, device) else torch.contiguous_format
    out = {}
    batch_size = cfg.micro_batch or cfg.batch_size  # what the trial's device holds at once
    for key, batch, repeats in (
        ("latency_ms", 1, REPEATS),
        ("latency_ms_batch", batch_size, BATCH_REPEATS),
    ):
        x = torch.randn(batch, *shape, device=device).contiguous(memory_format=fmt)
        out[key] = _median_ms(model, x, device, repeats)
    out["latency_batch"] = float(batch_size)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _median_ms(model: torch.nn.Module, x: torch.Tensor, device: torch.device, repeats: int) -> float:
    from sweeper.data import loaders

    times = []
    with torch.inference_mode(), loaders.autocast(device):
        for i in range(WARMUP + repeats):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= WARMUP:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
