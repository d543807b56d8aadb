"""The old import path of :mod:`sweeper.submit.predictor`: MLflow models logged before the move into
packages name ``sweeper.predictor`` as their loader module, and must keep loading."""

from sweeper.submit.predictor import *  # noqa: F403
from sweeper.submit.predictor import _load_pyfunc  # noqa: F401
