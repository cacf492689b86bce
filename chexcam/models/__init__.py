"""Registered models. Importing this package registers the built-in ones."""

from .backbone import DenseNetFeatures
from .build import build_model, create_model, list_models, require_weights
from .classifier import GapLinearClassifier
from .small import SmallDenseNetFeatures  # noqa: F401  (registers densenet_small, densenet_tiny)

__all__ = ["DenseNetFeatures", "GapLinearClassifier", "build_model", "create_model", "list_models",
           "require_weights"]
