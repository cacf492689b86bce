"""FinerCAM: a class explained against its most similar classes."""

from __future__ import annotations

import logging

import numpy as np
import paddle

from ..errors import ChexcamError
from ..registry import CAM_METHODS
from .base import BaseGradCAM, Pass

logger = logging.getLogger(__name__)


@CAM_METHODS.register("finercam")
class FinerCAM(BaseGradCAM):
    r"""Finer-CAM (Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual
    Explanation", CVPR 2025), on the channel weights of a base gradient method (default Grad-CAM).

    For class ``c`` of an image with logits ``y``, the comparison classes ``S_c`` are the ``comparisons``
    classes whose logits are closest to ``y_c`` (``|y_j - y_c|`` ascending, ``c`` itself excluded), and the
    differentiated target is the softmax-weighted difference

        T_c = sum_{j in S_c} p_j (y_c - alpha y_j) / (sum_{j in S_c} p_j + 1e-9),    p = softmax(y)

    (``p`` inside the graph, as in the authors' implementation in pytorch-grad-cam; ``alpha = 1`` explains
    what sets ``c`` apart from its neighbours, ``alpha = 0`` is the base method). Every class of every image
    gets its own comparison set; one backward pass per class, as for every gradient method. A model with one
    output (the malaria head) has no class to compare with: its Finer-CAM is the base method (with a WARNING).
    """

    DEFAULTS = {"alpha": 1.0, "comparisons": 3, "base": "gradcam"}

    def __init__(self, model, target_layer=None, **options):
        super().__init__(model, target_layer, **options)
        base = CAM_METHODS.get(str(self.options["base"]))
        if not (isinstance(base, type) and issubclass(base, BaseGradCAM)) or base is FinerCAM:
            raise ChexcamError(f"finercam base {self.options['base']!r} is not a gradient CAM method")
        self.base = base(model, target_layer)
        self.base.eigen_smooth = self.eigen_smooth
        self._warned = False
        if int(self.options["comparisons"]) < 1:
            raise ChexcamError(f"finercam comparisons must be >= 1, got {self.options['comparisons']}")

    def class_target(self, p: Pass, c: int) -> paddle.Tensor:
        y = p.scores
        z = p.logits.detach().numpy()
        k = min(int(self.options["comparisons"]), z.shape[1] - 1)
        if k < 1:
            if not self._warned:
                logger.warning("finercam on a model with one output has no class to compare with: its maps are "
                               "those of its base method %s", self.options["base"])
                self._warned = True
            return y[:, c].sum()
        order = np.argsort(np.abs(z - z[:, c:c + 1]), axis=1, kind="stable")
        comp = np.stack([row[row != c][:k] for row in order])  # [B, k]
        idx = paddle.to_tensor(comp)
        prob = paddle.nn.functional.softmax(p.logits, axis=-1)
        pj = paddle.take_along_axis(prob, idx, axis=1)
        yj = paddle.take_along_axis(y, idx, axis=1)
        alpha = float(self.options["alpha"])
        num = (pj * (y[:, c:c + 1] - alpha * yj)).sum(axis=1)
        return (num / (pj.sum(axis=1) + 1e-9)).sum()

    def combine(self, feats, grads, p):
        return self.base.combine(feats, grads, p)
