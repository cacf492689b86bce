"""Registered models. Importing this package registers the built-in ones."""

from .backbone import DenseNetFeatures
from .classifier import GapLinearClassifier
from .small import SmallDenseNetFeatures  # noqa: F401  (registers densenet_small, densenet_tiny)

__all__ = ["DenseNetFeatures", "GapLinearClassifier"]
