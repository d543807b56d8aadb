"""A saved submission model (a refit, a soup or an ensemble) from its folder, on decoded images.

The folder is what ``refit-best`` writes: ``config.yaml`` (the trial config as flat keys, the class names
and the model's data config) with ``model.safetensors``, or an ensemble's ``config.yaml`` listing its
members' weights and configs. Only the keys that decide a prediction are read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from . import network, transforms


@dataclass(frozen=True)
class Member:
    """One network of the model and how it sees an image, from its trial config's flat keys."""

    backbone: str
    head: str
    head_dropout: float
    eval: transforms.Eval
    normalize: bool  # subtract the model's mean and divide by its std
    batch_size: int  # images per forward pass, as the trial evaluated them
    channels_last: str | bool
    data_config: dict[str, Any]
    weights: Path

    @classmethod
    def from_flat(cls, flat: dict[str, Any], data_config: dict[str, Any], weights: Path) -> Member:
        ev = transforms.Eval(
            flat.get("eval.img_size"),
            flat.get("eval.crop_pct"),
            flat.get("eval.crop_mode"),
            bool(flat.get("eval.tta", False)),
        )
        return cls(
            flat["backbone"],
            flat.get("head", "linear"),
            float(flat.get("head_dropout", 0.0)),
            ev,
            bool(flat.get("normalize", True)),
            int(flat.get("batch_size", 64)),
            flat.get("channels_last", "auto"),
            {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()},
            weights,
        )

    def probs(self, images: Sequence[np.ndarray], num_classes: int, device: torch.device) -> torch.Tensor:
        """``[N, C]`` probabilities: each image through the eval transform, in batches of ``batch_size``."""
        from safetensors.torch import load_file

        net = network.build(self.backbone, self.head, num_classes, self.head_dropout)
        net.load_state_dict(load_file(str(self.weights)))
        net.to(device).eval()
        tf = transforms.eval_transform(self.data_config, self.eval, self.normalize)
        nhwc = network.channels_last(self.channels_last, self.backbone, device)
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            x = torch.stack([tf(torch.from_numpy(a).permute(2, 0, 1)) for a in batch]).to(device)
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            with network.autocast(device):
                out.append(network.probabilities(net, x, self.eval.tta).cpu())
        return torch.cat(out) if out else torch.zeros(0, num_classes)


@dataclass(frozen=True)
class Model:
    """Class probabilities for images: the mean over the members (one for a refit or a soup)."""

    classes: tuple[str, ...]
    members: tuple[Member, ...]

    @classmethod
    def from_folder(cls, folder: Path) -> Model:
        """The model in a folder ``refit-best`` wrote (single model, soup or ensemble)."""
        doc = yaml.safe_load((folder / "config.yaml").read_text())
        if "ensemble" in doc:
            members = tuple(
                Member.from_flat(m["trial_config"], m["data_config"], folder / m["weights"])
                for m in doc["ensemble"]
            )
        else:
            members = (Member.from_flat(doc["trial"], doc["data_config"], folder / "model.safetensors"),)
        return cls(tuple(doc["classes"]), members)

    def probs(self, images: Sequence[np.ndarray], device: torch.device | None = None) -> torch.Tensor:
        """``[N, C]`` class probabilities of ``H x W x 3`` uint8 images (on the GPU when there is one)."""
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        total = torch.zeros(len(images), len(self.classes))
        for m in self.members:
            total += m.probs(images, len(self.classes), device)
        return total / len(self.members)
