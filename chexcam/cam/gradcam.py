"""Grad-CAM: channel weights from spatially averaged gradients."""

from __future__ import annotations

import paddle

from ..registry import CAM_METHODS
from .base import BaseGradCAM


@CAM_METHODS.register("gradcam")
class GradCAM(BaseGradCAM):
    r"""Gradient-weighted Class Activation Mapping (Selvaraju et al., "Grad-CAM: Visual Explanations from
    Deep Networks via Gradient-based Localization", ICCV 2017).

    With ``A^k`` the ``k``-th channel of the hooked layer (``h x w``, ``Z = h w``) and ``y^c`` the logit
    of class ``c``:

        alpha_k^c = (1 / Z) sum_{i,j} d y^c / d A^k_{ij}
        L^c(i, j) = sum_k alpha_k^c A^k_{ij}        (the paper then applies a ReLU: ``relu=True``)

    On the last feature map of a GAP + linear head, ``d y^c / d A^k_{ij} = w_{c,k} / Z``, so
    ``L^c = M_c / Z``: Grad-CAM equals CAM up to the positive factor ``1 / Z``.
    """

    def channel_weights(self, feats: paddle.Tensor, grads: paddle.Tensor) -> paddle.Tensor:
        return grads.mean(axis=[2, 3])
