"""A submission model that stands alone: what a refit, a soup or an ensemble needs to predict.

Every MLflow model sweeper logs bundles this package (MLflow's ``code_paths``) as the top-level package
``servable``, so a model loads and serves where only its pinned requirements are installed, without
sweeper. It therefore imports nothing from sweeper (relative imports only) and no distribution beyond
:data:`REQUIREMENTS`. Sweeper uses these same modules for the same steps (decoding, the eval transform,
the network, the probabilities), so a served model cannot drift from ``sweeper predict`` and
``prediction.csv``.

Importing the package itself loads nothing heavy: :mod:`.pixels` is numpy and Pillow only.
"""

REQUIREMENTS = (
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    "pillow",
    "numpy",
    "pyyaml",
    "pydantic",
    "mlflow",
)
"""The distributions this package imports: pinned, at the versions that trained it, in every model."""
