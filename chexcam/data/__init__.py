"""Datasets, transforms and robust image decoding."""

from .io import read_image
from .transforms import EvalTransform, Geometry

__all__ = ["read_image", "EvalTransform", "Geometry"]
