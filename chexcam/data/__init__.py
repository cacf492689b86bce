"""Datasets, transforms and robust image decoding.

The stable interface: ``build_split(cfg, split) -> list[Sample]`` (``Sample.path``, ``.target`` float32
``[K]``, ``.patient``) for ``split`` in ``train``/``val``/``test``, and :class:`ImageDataset` for loaders.
"""

from .datasets import EpochBatchSampler, ImageDataset, build_split, build_splits, make_loader
from .io import read_image
from .samples import Sample, SplitSet
from .transforms import EvalTransform, Geometry, SquareEvalTransform, TenCrop, TrainTransform, eval_transform

__all__ = ["read_image", "EvalTransform", "Geometry", "SquareEvalTransform", "TenCrop", "TrainTransform",
           "eval_transform", "Sample", "SplitSet", "build_split", "build_splits", "ImageDataset",
           "EpochBatchSampler", "make_loader"]
