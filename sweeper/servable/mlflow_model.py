"""The models-from-code file of every MLflow model sweeper logs: MLflow runs it to build the model.

It imports the package as the model bundles it (``servable``, MLflow's ``code_paths``), never ``sweeper``.
"""

import mlflow
from servable.pyfunc import ImageClassifier

mlflow.models.set_model(ImageClassifier())
