"""Class activation maps: one base class, one small subclass per method, LIME, and :func:`explain`."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np
from paddle import nn

from ..errors import ChexcamError
from ..registry import CAM_METHODS
from ..utils import did_you_mean
from .ablation import AblationCAM
from .base import (
    ACTIVATIONS,
    COMMON_OPTIONS,
    FUSIONS,
    PREDICTED,
    TARGETS,
    BaseCAM,
    BaseGradCAM,
    Pass,
    activate,
    capture_output,
    class_table,
    eval_mode,
    find_layer,
    first_component,
    fuse_maps,
    resolve_classes,
)
from .cam import CAM, cam_maps
from .dff import DeepFeatureFactorization
from .eigen import KPCACAM, EigenCAM, EigenGradCAM
from .elementwise import GradCAMElementWise, HiResCAM, LayerCAM
from .finer import FinerCAM
from .gradcam import GradCAM, XGradCAM
from .gradcampp import GradCAMPlusPlus
from .lime import DEFAULTS as DEFAULTS_LIME
from .lime import LIME, LimeResult, lime_explain
from .score import ISCAM, SSCAM, ScoreCAM
from .shapley import ShapleyCAM
from .smooth import SmoothGradCAMPlusPlus


def list_cam_methods():
    """Names accepted by ``explain(method=...)``."""
    return CAM_METHODS.names()


def method_options(method: str) -> Dict[str, object]:
    """The keyword options of a registered method with their defaults: the CAM family's
    :data:`~chexcam.cam.base.COMMON_OPTIONS` (``aug_smooth``, ``eigen_smooth``, ``fusion``) plus its own
    ``DEFAULTS`` (Score-CAM's ``batch_size``, SS-CAM's ``num_samples`` and ``std``, ...); LIME's options."""
    cls = CAM_METHODS.get(method)
    if isinstance(cls, type) and issubclass(cls, BaseCAM):
        common = {"aug_smooth": False, "eigen_smooth": False, "fusion": "mean"}
        return {**common, **dict(cls.DEFAULTS)}
    return {k: DEFAULTS_LIME[k] for k in getattr(cls, "OPTIONS", ())}


def build_method(model: nn.Layer, method: str = "cam", layer=None, **options):
    """The registered method ``method`` for ``model``, with its keyword ``options`` (:func:`method_options`)."""
    cls = CAM_METHODS.get(method)
    allowed = tuple(method_options(method))
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ChexcamError(f"method '{method}' takes no option '{unknown[0]}'{did_you_mean(unknown[0], allowed)}"
                           + (f" (its options: {', '.join(allowed)})" if allowed else ""))
    return cls(model, layer, **options)


def explain(
    model: nn.Layer,
    x,
    method: str = "cam",
    classes=None,
    normalize: Union[bool, str] = True,
    upsample: Union[bool, Tuple[int, int]] = True,
    relu: bool = False,
    layer: Optional[str] = None,
    target: Optional[str] = None,
    activation: str = "sigmoid",
    **options,
) -> Tuple[np.ndarray, np.ndarray]:
    """Probabilities and class maps for a preprocessed batch, all classes in one pass: the reference.

    Runs the model's dynamic graph with a hook borrowed for this one call. Nothing is cached, nothing is
    written to disk, no state is kept between calls: the result is always that of the model as it is now.
    For repeated calls on a fixed model, :class:`chexcam.Explainer` runs the same computation through
    Paddle Inference and is checked against this function when it is built.

    Args:
        model: a chexcam model, or any Layer returning logits ``[B, K]`` (every method but ``cam`` and ``dff``,
            which need a GAP + Linear head, works without one, with ``layer`` given; ``lime`` only needs the
            logits).
        x: ``[B, 3, H, W]`` float32 numpy array or paddle tensor, already normalized.
        method: a registered method (``list_cam_methods()``): ``cam``; the gradient CAMs ``gradcam``,
            ``gradcampp``, ``xgradcam``, ``hirescam``, ``gradcam_elementwise``, ``layercam``, ``eigengradcam``,
            ``smoothgradcampp``, ``finercam``, ``shapleycam``; the gradient-free ``scorecam``, ``sscam``,
            ``iscam``, ``ablationcam``, ``eigencam``, ``kpcacam``, ``dff``; and ``lime``.
        classes: ``None`` for all classes, indices / label names, or ``"predicted"`` for each image's own
            top-1 class (maps ``[B, 1, H', W']`` of class ``probs.argmax(1)``).
        normalize: ``True``/``"minmax"`` per map, ``"global"`` per image, ``False``/``"none"`` raw.
        upsample: ``True`` for the input size (bilinear), a ``(H, W)`` tuple, or ``False`` (LIME's maps are
            at input resolution already).
        relu: clamp negative evidence to zero before upsampling and normalization.
        layer: dotted name of the layer to explain (as in ``model.named_sublayers()``), or a list of names
            whose maps are fused (``fusion``); default ``model.cam_layer``. Not for ``lime``.
        target: what is explained: ``"logit"`` (the default of the gradient methods and Ablation-CAM; ``cam``,
            ``eigencam``, ``kpcacam`` and ``dff`` know only this) or ``"probability"`` (the activation's output;
            the default of the Score-CAM family, as in its paper, and LIME's only target).
        activation: how the model's logits become probabilities: ``"sigmoid"`` (one per output: chexcam's
            multi-label and binary heads, the default) or ``"softmax"`` (one over the outputs: ImageNet-style
            classifiers). Sets the returned ``probs`` and the ``"probability"`` target.
        **options: the method's own options (:func:`method_options`): for every CAM method ``aug_smooth``,
            ``eigen_smooth`` and ``fusion``; Score-CAM's ``batch_size``, SS-CAM's ``num_samples``/``std``/``seed``,
            IS-CAM's ``steps``, ...; LIME's ``num_samples``, ``segmentation``, ``hide_color``, ``seed``, ... (see
            :data:`chexcam.cam.lime.DEFAULTS`).

    Returns:
        ``probs [B, K]`` (the activation of the logits) and ``maps [B, K', H', W']``, float32 numpy. For
        ``lime`` the pair is a :class:`~chexcam.cam.lime.LimeResult`, which also carries ``segments`` (the
        superpixels) and the per-superpixel ``weights``.
    """
    cam = build_method(model, method, layer, **options)
    return cam(x, classes=classes, normalize=normalize, upsample=upsample, relu=relu, target=target,
               activation=activation)


__all__ = ["BaseCAM", "BaseGradCAM", "CAM", "GradCAM", "GradCAMPlusPlus", "LIME", "LimeResult", "explain",
           "XGradCAM", "HiResCAM", "GradCAMElementWise", "LayerCAM", "EigenCAM", "EigenGradCAM", "KPCACAM",
           "SmoothGradCAMPlusPlus", "FinerCAM", "ShapleyCAM", "ScoreCAM", "SSCAM", "ISCAM", "AblationCAM",
           "DeepFeatureFactorization", "method_options", "Pass", "first_component", "fuse_maps", "COMMON_OPTIONS",
           "FUSIONS",
           "lime_explain", "build_method", "list_cam_methods", "capture_output", "eval_mode", "find_layer",
           "resolve_classes", "class_table", "activate", "cam_maps", "ACTIVATIONS", "TARGETS", "PREDICTED"]
