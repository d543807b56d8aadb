"""The MLflow ``pyfunc`` model: a list of images in, one prediction per image out.

Its signature comes from the type hints of :meth:`ImageClassifier.predict`: any list in (each item a
file path on the server, base64 image file bytes, or an ``H x W x 3`` uint8 array), a list of
:class:`Prediction` out. Served, ``/invocations`` takes ``{"inputs": [...]}``; an input it cannot read
is an HTTP 400 whose message names the input and what was expected.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel

from . import pixels
from .model import Model

ARTIFACT = "model"  # the name the model folder is logged under (``context.artifacts``)

# The input is any list on purpose (paths, base64 bytes and arrays, told apart by pixels.read, which names
# what it expected when it cannot); MLflow's note, as it reads the type hints below, that it does not
# validate such a list says nothing new.
warnings.filterwarnings("ignore", message=r".*Any type hint is inferred as AnyType")


class Prediction(BaseModel):
    """One image's answer: the class, its probability, and every class's probability (in class order)."""

    pred_label: str
    confidence: float
    probs: list[float]


class ImageClassifier(PythonModel):
    """A refit, a soup or an ensemble as MLflow loads it: its folder, read in :meth:`load_context`."""

    def load_context(self, context: Any) -> None:
        self.model = Model.from_folder(Path(context.artifacts[ARTIFACT]))

    def predict(
        self, context: Any, model_input: list[Any], params: dict[str, Any] | None = None
    ) -> list[Prediction]:
        try:
            images = [pixels.read(item, i) for i, item in enumerate(model_input)]
        except pixels.BadInput as e:
            raise MlflowException.invalid_parameter_value(str(e)) from None
        p = self.model.probs(images)
        top = p.max(1)
        return [
            Prediction(pred_label=self.model.classes[i], confidence=c, probs=row)
            for i, c, row in zip(top.indices.tolist(), top.values.tolist(), p.tolist(), strict=True)
        ]
