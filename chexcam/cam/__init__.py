"""Class activation maps: one base class, one small subclass per method, and :func:`explain`."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
from paddle import nn

from ..registry import CAM_METHODS
from .base import BaseCAM, GradBaseCAM, capture_output, eval_mode, normalize_maps
from .cam import CAM
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
    """Probabilities and class maps for a preprocessed batch, all classes in one pass.

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

    On a CPU, ``method="cam"`` on a chexcam model runs through a Paddle Inference predictor of the model and
    its CAM, exported once per weights state into ``$CHEXCAM_CACHE_DIR`` (default ``~/.cache/chexcam``) and
    checked against the dynamic graph on first use; set ``CHEXCAM_FAST_CAM=0`` to always use the dynamic
    graph (see :mod:`chexcam.inference`). Hooks, other layers and gradient methods use the dynamic graph.
    """
    if method == "cam":
        # CPU: the model + CAM exported once per weights state and run by a cached oneDNN predictor
        # (~3x paddle's dynamic graph, same numbers within 1e-5); None whenever the dynamic graph must answer
        from ..inference import fast_explain

        out = fast_explain(model, x, method, classes, normalize, upsample, relu, layer)
        if out is not None:
            return out
    cam = CAM_METHODS.get(method)(model, layer)
    return cam(x, classes=classes, normalize=normalize, upsample=upsample, relu=relu)


__all__ = ["BaseCAM", "GradBaseCAM", "CAM", "GradCAM", "GradCAMPlusPlus", "explain", "list_cam_methods", "capture_output", "eval_mode", "normalize_maps"]
