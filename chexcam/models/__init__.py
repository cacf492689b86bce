"""Registered models. Importing this package registers the built-in ones."""

from .backbone import DenseNetFeatures
from .classifier import GapLinearClassifier

__all__ = ["DenseNetFeatures", "GapLinearClassifier"]
