"""Smooth Grad-CAM++: Grad-CAM++ with its derivatives averaged over noisy copies of the input."""

from __future__ import annotations

from typing import List

import numpy as np
import paddle
import paddle.nn.functional as F

from ..errors import ChexcamError
from ..registry import CAM_METHODS
from .base import BaseGradCAM, Pass, activate_tensor, capture_output


@CAM_METHODS.register("smoothgradcampp")
class SmoothGradCAMPlusPlus(BaseGradCAM):
    r"""Smooth Grad-CAM++ (Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization
    Technique for Deep Convolutional Neural Network Models", arXiv:1908.01224, 2019).

    With ``g_s = d y^c / d A`` at the noisy input ``x + e_s``, ``e_s ~ N(0, std^2)`` (``s = 1 .. n``) and
    ``A`` the activations of the clean input:

        D_p = (1 / n) sum_s g_s^p                  (p = 1, 2, 3)
        a_{ij} = D_2 / (2 D_2 + sum_{a,b} A_{ab} D_3)      (0 where the denominator is 0)
        w_k^c  = sum_{i,j} a_{ij} ReLU(D_1)
        L^c    = sum_k w_k^c A^k

    The ``n`` noisy forwards are shared by every class (one forward and one backward per class each); every
    image of a batch gets the same noise draws (``seed``), so a batch gives what its images give one by one.
    torch-cam's ``SmoothGradCAMpp`` multiplies ``a`` by the last sample's gradient instead of ``D_1``.
    """

    DEFAULTS = {"num_samples": 4, "std": 0.3, "seed": 0}

    def __init__(self, model, target_layer=None, **options):
        super().__init__(model, target_layer, **options)
        if int(self.options["num_samples"]) < 1 or not float(self.options["std"]) >= 0:
            raise ChexcamError(f"smoothgradcampp needs num_samples >= 1 and std >= 0, got "
                               f"{self.options['num_samples']} and {self.options['std']}")

    def noise(self, shape) -> np.ndarray:
        """``[n, 3, H, W]`` float32 noise, the same for every image."""
        rng = np.random.default_rng(int(self.options["seed"]))
        n = int(self.options["num_samples"])
        return (rng.standard_normal((n,) + tuple(shape)) * float(self.options["std"])).astype(np.float32)

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        noise = self.noise(p.x.shape[1:])
        d1 = [None] * len(classes)
        d2 = [None] * len(classes)
        d3 = [None] * len(classes)
        for e in noise:
            xs = (p.x.detach() + paddle.to_tensor(e)[None])
            xs.stop_gradient = False
            with capture_output(p.layer, detach=False) as store:
                logits = self.model(xs)
            feats = store["output"]
            scores = logits if p.target == "logit" else activate_tensor(logits, p.activation)
            for i, c in enumerate(classes):
                (g,) = paddle.grad(scores[:, c].sum(), feats, retain_graph=True, allow_unused=True)
                if g is None:
                    raise ChexcamError(f"class {c} does not depend on layer '{p.layer_name}'")
                g = g.detach()
                g2 = g * g
                d1[i] = g if d1[i] is None else d1[i] + g
                d2[i] = g2 if d2[i] is None else d2[i] + g2
                d3[i] = g2 * g if d3[i] is None else d3[i] + g2 * g
        n = float(len(noise))
        fd = p.feats.detach()
        total = fd.sum(axis=[2, 3], keepdim=True)
        out = []
        for i in range(len(classes)):
            m1, m2, m3 = d1[i] / n, d2[i] / n, d3[i] / n
            denom = 2.0 * m2 + total * m3
            ok = denom.abs() > 1e-12
            alpha = paddle.where(ok, m2 / paddle.where(ok, denom, paddle.ones_like(denom)), paddle.zeros_like(m2))
            out.append(self.weighted_sum(fd, (alpha * F.relu(m1)).sum(axis=[2, 3])))
        return paddle.stack(out, axis=1)
