"""Class activation maps: one base class, one small subclass per method, and :func:`explain`."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
from paddle import nn

from ..registry import CAM_METHODS
from .base import BaseCAM, BaseGradCAM, capture_output, eval_mode, find_layer, resolve_classes
from .cam import CAM, cam_maps
from .gradcam import GradCAM
from .gradcampp import GradCAMPlusPlus


def list_cam_methods():
    """Names accepted by ``explain(method=...)``."""
    return CAM_METHODS.names()


def explain(
    model: nn.Layer,
    x,
    method: str = "cam",
    classes=None,
    normalize: Union[bool, str] = True,
    upsample: Union[bool, Tuple[int, int]] = True,
    relu: bool = False,
    layer: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Probabilities and class maps for a preprocessed batch, all classes in one pass: the reference.

    Runs the model's dynamic graph with a hook borrowed for this one call. Nothing is cached, nothing is
    written to disk, no state is kept between calls: the result is always that of the model as it is now.
    For repeated calls on a fixed model, :class:`chexcam.Explainer` runs the same computation through
    Paddle Inference and is checked against this function when it is built.

    Args:
        model: a chexcam model, or any Layer returning logits ``[B, K]`` (for the gradient methods
            ``gradcam``/``gradcampp``, which also work without a GAP + Linear head, with ``layer`` given).
        x: ``[B, 3, H, W]`` float32 numpy array or paddle tensor, already normalized.
        method: a registered CAM method (``list_cam_methods()``).
        classes: ``None`` for all classes, or indices / label names.
        normalize: ``True``/``"minmax"`` per map, ``"global"`` per image, ``False``/``"none"`` raw.
        upsample: ``True`` for the input size (bilinear), a ``(H, W)`` tuple, or ``False``.
        relu: clamp negative evidence to zero before upsampling and normalization.
        layer: dotted name of the layer to explain; default ``model.cam_layer``.

    Returns:
        ``probs [B, K]`` (sigmoid of the logits) and ``maps [B, K', H', W']``, float32 numpy.
    """
    cam = CAM_METHODS.get(method)(model, layer)
    return cam(x, classes=classes, normalize=normalize, upsample=upsample, relu=relu)


__all__ = ["BaseCAM", "BaseGradCAM", "CAM", "GradCAM", "GradCAMPlusPlus", "explain", "list_cam_methods",
           "capture_output", "eval_mode", "find_layer", "resolve_classes", "cam_maps"]
