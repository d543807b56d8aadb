"""A submission model used on new images: a refit, a soup or an ensemble, from its folder or from MLflow.

The folder ``refit-best`` writes (``config.yaml`` and ``model.safetensors``, or an ensemble's
``config.yaml`` and ``members/``) is the whole model. It is also what the MLflow model holds, with the
code that reads it: :mod:`sweeper.servable`, bundled (:func:`bundle`), so the model loads and serves
where sweeper is not installed. Models logged before that name this module (:func:`_load_pyfunc`).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import yaml

from sweeper.data import images as data_lib
from sweeper.errors import SweeperError
from sweeper.store.tracking import ModelLoader
from sweeper.study.checks import config_from_flat
from sweeper.study.config import TrialConfig
from sweeper.train import artifacts, evaluation

if TYPE_CHECKING:
    import pandas as pd

ModelInput = Union["pd.DataFrame", "pd.Series[Any]", list[Any], np.ndarray]
"""What MLflow hands ``predict``: image paths (a list, a Series, a frame's first column) or arrays."""

SERVES = (
    "a list of images, each a file path on the server, base64-encoded image file bytes, or an "
    "H x W x 3 uint8 array; returns per image pred_label, confidence and probs (in the order of classes)"
)


def pinned(names: tuple[str, ...]) -> tuple[str, ...]:
    """``name==version`` for each distribution, at the version installed here (the one that trained)."""
    from importlib.metadata import version

    return tuple(f"{n}=={version(n)}" for n in names)


@contextlib.contextmanager
def bundle() -> Iterator[ModelLoader]:
    """How to log a model folder: :mod:`sweeper.servable` copied under its bundled name ``servable``, and
    importable by that name while MLflow runs the models-from-code file as it logs it."""
    from sweeper import servable
    from sweeper.servable import pyfunc

    source = Path(servable.__file__).parent
    with tempfile.TemporaryDirectory(prefix="sweeper-bundle-") as tmp:
        code = Path(tmp) / "servable"
        shutil.copytree(source, code, ignore=shutil.ignore_patterns("__pycache__"))
        sys.path.insert(0, tmp)
        try:
            yield ModelLoader(
                python_model=code / "mlflow_model.py",
                code=(code,),
                artifact=pyfunc.ARTIFACT,
                requirements=pinned(servable.REQUIREMENTS),
                metadata={"serves": SERVES},
            )
        finally:
            sys.path.remove(tmp)
            for name in [m for m in sys.modules if m == "servable" or m.startswith("servable.")]:
                del sys.modules[name]


@dataclass(frozen=True)
class Member:
    """One network of the model: its config, data config and weights file."""

    cfg: TrialConfig
    data_config: dict[str, Any]
    weights: Path


@dataclass(frozen=True)
class Predictor:
    """Class probabilities for images: the mean over the members (one for a refit or a soup)."""

    classes: tuple[str, ...]
    members: tuple[Member, ...]

    @classmethod
    def from_folder(cls, folder: Path) -> Predictor:
        """The model in a folder ``refit-best`` wrote (single model, soup or ensemble)."""
        cfg_path = folder / "config.yaml"
        if not cfg_path.is_file():
            raise SweeperError(f"{folder} holds no config.yaml: not a model folder written by refit-best")
        doc = yaml.safe_load(cfg_path.read_text())
        if "ensemble" in doc:
            members = tuple(
                Member(config_from_flat(m["trial_config"]), _tuples(m["data_config"]), folder / m["weights"])
                for m in doc["ensemble"]
            )
            return _checked(cls(tuple(doc["classes"]), members), folder)
        cfg, classes, dcfg = artifacts.read_config(cfg_path)
        return _checked(cls(classes, (Member(cfg, dcfg, folder / "model.safetensors"),)), folder)

    def probs(
        self, files: list[Path], on_member: Callable[[int, Member], None] | None = None
    ) -> torch.Tensor:
        """``[N, C]`` class probabilities, each member seeing the images through its own eval transform
        (batched on the GPU when there is one); ``on_member(i, member)`` hears of each member in turn."""
        total = torch.zeros(len(files), len(self.classes))
        for i, m in enumerate(self.members):
            if on_member is not None:
                on_member(i, m)
            net = evaluation.load_for_inference(m.cfg, len(self.classes), artifacts.load_weights(m.weights))
            total += evaluation.predict_files(net, files, m.cfg, m.data_config)
        return total / len(self.members)

    def predict(self, model_input: ModelInput, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """MLflow's pyfunc entry: image paths (a list, a Series or a DataFrame's first column) or decoded
        images (uint8 ``H x W x 3`` arrays) -> a DataFrame of ``pred_label``, ``confidence``, ``probs``."""
        import pandas as pd

        with tempfile.TemporaryDirectory(prefix="sweeper-predict-") as tmp:
            files = _as_files(model_input, Path(tmp))
            p = self.probs(files)
        top = p.max(1)
        return pd.DataFrame(
            {
                "pred_label": [self.classes[i] for i in top.indices.tolist()],
                "confidence": top.values.tolist(),
                "probs": p.tolist(),
            }
        )


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _as_files(model_input: ModelInput, tmp: Path) -> list[Path]:
    """Paths as given; decoded images written losslessly to ``tmp`` first (one decoder for both)."""
    import pandas as pd
    from PIL import Image

    if isinstance(model_input, pd.DataFrame):  # its first column
        model_input = model_input.iloc[:, 0]
    items = list(model_input)
    files = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            files.append(Path(item))
            continue
        arr = np.asarray(item)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise SweeperError(
                f"input {i}: expected an image path or a uint8 H x W x 3 array, got {arr.shape}"
            )
        path = tmp / f"image-{i:06d}.png"
        Image.fromarray(arr.squeeze(2) if arr.shape[2] == 1 else arr).save(path)
        files.append(path)
    return files


def _load_pyfunc(data_path: str) -> Predictor:
    """Called by ``mlflow.pyfunc.load_model`` with the model's data folder."""
    return Predictor.from_folder(Path(data_path))


def image_files(paths: list[Path]) -> list[Path]:
    """The image files named, and those inside the folders named (at any depth, sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and data_lib.is_image_name(f.name))
        elif p.is_file():
            out.append(p)
        else:
            raise SweeperError(f"{p} does not exist; pass image files or folders of images")
    if not out:
        raise SweeperError(f"no image files in {', '.join(map(str, paths))}")
    return out


def _checked(model: Predictor, folder: Path) -> Predictor:
    """A model folder whose weights are all there, or one line naming the missing file."""
    for m in model.members:
        if not m.weights.is_file():
            raise SweeperError(
                f"{folder}: its config.yaml names {m.weights.name}, which is not there; copy the whole "
                "folder refit-best wrote (or run refit-best again)"
            )
    return model


def open_model(ref: str, tracking_uri: str | None) -> tuple[Predictor, str]:
    """A model by folder, MLflow URI (``runs:/...``, ``models:/...``) or study name (its newest refit).
    Returns it and where it came from."""
    folder = Path(ref)
    if folder.is_dir():
        return Predictor.from_folder(folder), str(folder)
    from sweeper.store import tracking

    if ref.startswith(("runs:/", "models:/")):
        uri = ref
    else:
        from sweeper.study import spec as spec_lib

        try:
            name = spec_lib.load(ref).name
        except SweeperError:
            name = ref  # a study in storage only
        uri = tracking.MlflowTracker(tracking_uri, name).latest_model()
    return Predictor.from_folder(_download(uri, tracking_uri)), uri


def _download(uri: str, tracking_uri: str | None) -> Path:
    import mlflow

    from sweeper.store import tracking

    mlflow.set_tracking_uri(tracking.resolve_uri(tracking_uri))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(uri, dst_path=tempfile.mkdtemp(prefix="sweeper-model-"))
        )
    except Exception as e:
        raise SweeperError(f"cannot fetch MLflow model {uri}: {str(e).splitlines()[0][:200]}") from None
    found = sorted(local.rglob("config.yaml"))
    if not found:
        raise SweeperError(f"{uri} is not a sweeper model (no config.yaml in it)")
    return found[0].parent
