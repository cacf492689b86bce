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


@CAM_METHODS.register("xgradcam")
class XGradCAM(BaseGradCAM):
    r"""XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    BMVC 2020).

    Each gradient is weighted by the activation's share of its channel:

        alpha_k^c = sum_{i,j} (A^k_{ij} / (sum_{a,b} A^k_{ab} + eps)) d y^c / d A^k_{ij},   eps = 1e-7
        L^c(i, j) = sum_k alpha_k^c A^k_{ij}

    (``eps`` as pytorch-grad-cam; a channel that is zero everywhere gets weight 0). On the last feature map of
    a GAP + linear head the gradient is ``w_{c,k} / Z`` everywhere, so ``alpha_k^c = w_{c,k} / Z`` and
    XGrad-CAM = Grad-CAM = CAM / Z.
    """

    def channel_weights(self, feats: paddle.Tensor, grads: paddle.Tensor) -> paddle.Tensor:
        share = feats / (feats.sum(axis=[2, 3], keepdim=True) + 1e-7)
        return (share * grads).sum(axis=[2, 3])
