"""Grad-CAM++: channel weights from positive gradients, weighted by second/third-order terms."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

from ..registry import CAM_METHODS
from .base import BaseGradCAM


@CAM_METHODS.register("gradcampp")
class GradCAMPlusPlus(BaseGradCAM):
    r"""Grad-CAM++ (Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual Explanations for
    Deep Convolutional Networks", WACV 2018).

    With ``g^k_{ij} = d y^c / d A^k_{ij}`` the gradient of the class logit (the paper's closed form for
    an exponential of the score, whose higher derivatives are powers of ``g``):

        a^{kc}_{ij} = g^2 / (2 g^2 + sum_{a,b} A^k_{ab} g^3)     (0 where the denominator is 0)
        w_k^c       = sum_{i,j} a^{kc}_{ij} ReLU(g^k_{ij})
        L^c(i, j)   = sum_k w_k^c A^k_{ij}
    """

    def channel_weights(self, feats: paddle.Tensor, grads: paddle.Tensor) -> paddle.Tensor:
        g2 = grads * grads
        g3 = g2 * grads
        denom = 2.0 * g2 + feats.sum(axis=[2, 3], keepdim=True) * g3
        ok = denom.abs() > 1e-12
        alpha = paddle.where(ok, g2 / paddle.where(ok, denom, paddle.ones_like(denom)), paddle.zeros_like(g2))
        return (alpha * F.relu(grads)).sum(axis=[2, 3])
