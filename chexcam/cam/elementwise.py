"""Gradient CAMs that weight every position, not every channel: HiResCAM, Grad-CAM element-wise, LayerCAM."""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

from ..registry import CAM_METHODS
from .base import BaseGradCAM, Pass


@CAM_METHODS.register("hirescam")
class HiResCAM(BaseGradCAM):
    r"""HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891, 2020).

    The gradient multiplies the activation element-wise instead of being averaged first:

        L^c(i, j) = sum_k (d y^c / d A^k_{ij}) A^k_{ij}

    On the last feature map of a GAP + linear head the gradient is ``w_{c,k} / Z``, so HiResCAM = CAM / Z
    (and ``sum_{i,j} L^c + b_c = y^c``: the map adds up to the logit).
    """

    def combine(self, feats: paddle.Tensor, grads: paddle.Tensor, p: Pass) -> paddle.Tensor:
        return self.reduce(grads * feats)


@CAM_METHODS.register("gradcam_elementwise")
class GradCAMElementWise(BaseGradCAM):
    r"""Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``, a variant of Grad-CAM, Selvaraju et al.,
    ICCV 2017): the positive part of each product of gradient and activation, summed over channels.

        L^c(i, j) = sum_k ReLU((d y^c / d A^k_{ij}) A^k_{ij})

    At the last feature map of a GAP + linear head (where ``A >= 0`` after the final ReLU) this is
    ``sum_k ReLU(w_{c,k}) A^k / Z``, the same as LayerCAM there.
    """

    def combine(self, feats: paddle.Tensor, grads: paddle.Tensor, p: Pass) -> paddle.Tensor:
        return self.reduce(F.relu(grads * feats))


@CAM_METHODS.register("layercam")
class LayerCAM(BaseGradCAM):
    r"""LayerCAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    IEEE TIP 30, 2021).

    Every position of every channel is weighted by its own positive gradient:

        L^c(i, j) = sum_k ReLU(d y^c / d A^k_{ij}) A^k_{ij}

    The paper fuses shallow and deep layers after scaling each layer's map by ``tanh(2 M / max M)`` (its eq.
    9): ``explain(..., method="layercam", layer=[...], fusion="layercam")``. At the last feature map of a GAP
    + linear head, ``L^c = sum_k ReLU(w_{c,k}) A^k / Z``.
    """

    def combine(self, feats: paddle.Tensor, grads: paddle.Tensor, p: Pass) -> paddle.Tensor:
        return self.reduce(F.relu(grads) * feats)
