"""The tiny things tests build, in one place: image folders, trial configs, data configs and study files.

Each builder makes the smallest real thing: a ``TrialConfig`` on timm's ``test_resnet``, a study file
written where the test says and loaded by the real parser, an image folder of learnable patterns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from PIL import Image

from sweeper.study import spec as spec_lib
from sweeper.study.config import TrialConfig, build_config

if TYPE_CHECKING:
    import torch

TINY = ["--set", "backbone=test_resnet", "--set", "img_size=32", "--set", "num_workers=0"]
"""CLI args that pin a tiny, fast backbone for tests."""


# ---- image folders -------------------------------------------------------------------------------------


def _pattern(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A class-specific image: a dominant color and a stripe orientation, plus noise, so it is learnable."""
    img = rng.integers(0, 60, (size, size, 3)).astype(np.int16)
    img[..., label % 3] += 150
    if label % 2:
        img[::4, :, :] += 60
    else:
        img[:, ::4, :] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("bird", "insect", "plant"),
    n_train: int = 10,
    n_val: int = 5,
    n_test: int = 6,
    size: int = 24,
    seed: int = 0,
) -> Path:
    """Write ROOT/train/<class>, ROOT/val/<class>, ROOT/test in mixed formats (RGB/gray/RGBA PNG, JPEG)."""
    rng = np.random.default_rng(seed)
    modes = ["png", "jpg", "gray", "rgba"]

    def save(arr: np.ndarray, path_stem: Path, k: int) -> None:
        mode = modes[k % len(modes)]
        im = Image.fromarray(arr)
        path_stem.parent.mkdir(parents=True, exist_ok=True)
        if mode == "jpg":
            im.save(path_stem.with_suffix(".jpg"), quality=95)
        elif mode == "gray":
            im.convert("L").save(path_stem.with_suffix(".png"))
        elif mode == "rgba":
            im.convert("RGBA").save(path_stem.with_suffix(".png"))
        else:
            im.save(path_stem.with_suffix(".png"))

    k = 0
    for label, c in enumerate(classes):
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                save(_pattern(rng, label, size), root / split / c / f"{c}_{i:03d}", k)
                k += 1
    for i in range(n_test):
        save(_pattern(rng, i % len(classes), size), root / "test" / f"img_{i:03d}", i)
    return root


def fake_hub_cache(root: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """Lay out a Hugging Face hub cache entry, as a download would, holding weights we made ourselves."""
    from safetensors.torch import save_file

    entry = root / f"models--{repo.replace('/', '--')}"
    (entry / "snapshots" / "abc123").mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    save_file(state, str(entry / "snapshots" / "abc123" / "model.safetensors"))
    return root


# ---- trial and data configs ----------------------------------------------------------------------------


def config(**values: object) -> TrialConfig:
    """A ``TrialConfig`` on the tiny test backbone; every other value is the default unless given."""
    return build_config({"backbone": "test_resnet", **values})


def tiny_config(**values: object) -> TrialConfig:
    """16 px images loaded in the test's own process: a forward pass or one step in milliseconds."""
    return config(**{"img_size": 16, "num_workers": 0, **values})


def fit_config(**values: object) -> TrialConfig:
    """A config that trains for real on the ``image_folder`` fixture: 32 px, batches of 8, two epochs."""
    return config(**{"img_size": 32, "num_workers": 0, "epochs": 2, "batch_size": 8, **values})


def trial_config(**values: object) -> TrialConfig:
    """``fit_config`` without warm-up: what a trial job of the workers runs."""
    return fit_config(**{"warmup_epochs": 0.0, **values})


def data_config(
    size: int = 32,
    interpolation: str = "bilinear",
    crop_pct: float = 0.875,
    mean: tuple[float, float, float] = (0.5, 0.4, 0.3),
    std: tuple[float, float, float] = (0.2, 0.25, 0.3),
) -> dict[str, Any]:
    """A timm data config (what ``resolve_data_config`` returns) for ``size`` px images."""
    return {
        "input_size": (3, size, size),
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
        "crop_pct": crop_pct,
    }


# ---- study files ---------------------------------------------------------------------------------------


def write_study(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load_study(folder: Path, text: str, name: str = "s") -> spec_lib.Study:
    """Write ``text`` to FOLDER/NAME.yaml and load it with the real parser."""
    return spec_lib.load(str(write_study(folder / f"{name}.yaml", text)))


def tiny_study_doc(
    name: str,
    root: Path | str,
    epochs: int = 1,
    fixed: dict[str, object] | None = None,
    space: dict[str, object] | None = None,
) -> dict[str, Any]:
    """A study of a few seconds a trial: random sampler (seed 0), no pruner, batches of 8."""
    doc: dict[str, Any] = {
        "name": name,
        "data": {"root": str(root)},
        "epochs": epochs,
        "pruner": "none",
        "sampler": {"name": "random", "seed": 0},
        "fixed": {"batch_size": 8, **(fixed or {})},
    }
    if space is not None:
        doc["space"] = space
    return doc


def tiny_study(folder: Path, image_folder: Path, name: str, **fixed: object) -> spec_lib.Study:
    """A one-epoch study with nothing to sample, on the tiny backbone, loaded from FOLDER/NAME.yaml."""
    tiny = {"backbone": "test_resnet", "img_size": 32, "num_workers": 0}
    return load_study(
        folder, yaml.safe_dump(tiny_study_doc(name, image_folder, fixed={**tiny, **fixed})), name
    )


def write_tiny_study(name: str, image_folder: Path, epochs: int = 1) -> str:
    """NAME.yaml in the working directory, sampling ``lr_head``; the CLI pins the backbone with ``TINY``."""
    space = {"lr_head": {"float": [1e-3, 1e-1], "log": True}}
    Path(f"{name}.yaml").write_text(yaml.safe_dump(tiny_study_doc(name, image_folder, epochs, space=space)))
    return f"{name}.yaml"
