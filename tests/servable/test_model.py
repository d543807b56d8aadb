"""The served model answers as ``sweeper predict`` does, to the bit: a refit folder and an ensemble folder
read by sweeper's Predictor and by servable's Model; the pyfunc around it names what a bad input lacks."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException

from sweeper.servable import pixels
from sweeper.servable.model import Model
from sweeper.servable.pyfunc import ImageClassifier
from sweeper.study.config import TrialConfig
from sweeper.submit.predictor import Predictor
from sweeper.train import artifacts
from sweeper.train import model as model_lib
from tests.helpers.builders import make_image_folder, tiny_config

CLASSES = ("bird", "insect", "plant")


def _member(folder: Path, name: str, cfg: TrialConfig, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    net = model_lib.create(cfg, len(CLASSES))
    dcfg = model_lib.data_config(net, cfg.img_size, cfg.interpolation)
    artifacts.save_weights(folder / f"{name}.safetensors", net.state_dict())
    return {"weights": f"{name}.safetensors", "trial_config": cfg.flat(), "data_config": dcfg}


MEMBERS = [
    tiny_config(head="se", batch_size=4, **{"eval.tta": True, "eval.crop_pct": 0.9}),
    tiny_config(
        head="linear",
        head_dropout=0.2,
        interpolation="bicubic",
        normalize=False,
        channels_last=True,
        **{"eval.crop_mode": "border", "eval.img_size": 20},
    ),
]


@pytest.fixture
def ensemble(tmp_path: Path) -> Path:
    folder = tmp_path / "ensemble"
    folder.mkdir()
    listed = [_member(folder, f"m{i}", cfg, i) for i, cfg in enumerate(MEMBERS)]
    doc = {"ensemble": listed, "classes": list(CLASSES)}
    (folder / "config.yaml").write_text(yaml.safe_dump(artifacts.to_plain(doc), sort_keys=False))
    return folder


def test_a_refit_and_an_ensemble_answer_as_sweeper_predict_to_the_bit(tmp_path: Path, ensemble: Path) -> None:
    files = sorted((make_image_folder(tmp_path / "data") / "test").iterdir())  # RGB, gray, RGBA, JPEG
    images = [pixels.read(str(f)) for f in files]
    refit = tmp_path / "refit"
    refit.mkdir()
    m = _member(refit, "model", MEMBERS[0], 0)
    artifacts.write_config(refit / "config.yaml", MEMBERS[0], CLASSES, m["data_config"])
    for folder in (refit, ensemble):
        want = Predictor.from_folder(folder).probs(files)
        assert torch.equal(Model.from_folder(folder).probs(images), want)
    one, two = (Model.from_folder(ensemble).members[i] for i in (0, 1))
    assert (one.head, one.eval.tta, two.eval.crop_mode, two.normalize) == ("se", True, "border", False)


def test_the_pyfunc_names_the_input_it_cannot_read(tmp_path: Path, ensemble: Path) -> None:
    model = ImageClassifier()
    model.load_context(SimpleNamespace(artifacts={"model": str(ensemble)}))
    f = next(iter((make_image_folder(tmp_path / "data") / "test").iterdir()))
    got = model.predict(None, [str(f), base64.b64encode(f.read_bytes()).decode()])
    assert got[0] == got[1] and got[0].pred_label in CLASSES and len(got[0].probs) == 3
    assert got[0].confidence == max(got[0].probs)
    with pytest.raises(MlflowException, match=r"^input 1: got a float; expected an image file path"):
        model.predict(None, [str(f), 0.5])
