"""Ablation-CAM: channel weights from the score drop when a channel is switched off."""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import paddle
from paddle import nn

from ..errors import ChexcamError
from ..models.classifier import GapLinearClassifier
from ..registry import CAM_METHODS
from .base import BaseCAM, Pass, activate
from .graph import export_blocker


@CAM_METHODS.register("ablationcam")
class AblationCAM(BaseCAM):
    r"""Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
    Gradient-free Localization", WACV 2020).

    With ``y^c`` the class score and ``y^c_k`` the score when channel ``k`` of the hooked layer is set to zero
    (the layers after it run again on the ablated map):

        w_k^c = (y^c - y^c_k) / |y^c|
        L^c   = sum_k w_k^c A^k                (the paper's ReLU: relu=True)

    The paper divides by ``y^c``, a positive class score on its ImageNet models; a multi-label head's logit is
    often negative, and dividing by it would flip every weight of that class, so chexcam divides by ``|y^c|``
    (the same map for ``y^c > 0``). pytorch-grad-cam divides by ``y^c`` and, where the layer's output has no
    zero, sets an ablated channel to ``min - 1e7`` instead of 0. The ``C`` ablated forwards of an image are
    scored for every class at once, ``batch_size`` at a time. At the layer that feeds a GAP + linear head (the
    default layer of a chexcam model) the layers after it are linear: the ablated logits are exactly
    ``z - mean(A^k) w_{:,k}``, so all ``C`` ablations cost no forward at all (:meth:`head_ablated_logits`; the
    tests check it against the forwards of :meth:`ablated_scores`).
    """

    supports_probability = True
    DEFAULTS = {"batch_size": 32}

    def __init__(self, model, target_layer=None, **options):
        super().__init__(model, target_layer, **options)
        if int(self.options["batch_size"]) < 1:
            raise ChexcamError(f"ablationcam batch_size must be >= 1, got {self.options['batch_size']}")

    def ablated_scores(self, p: Pass, b: int) -> np.ndarray:
        """``[C, K]`` scores of image ``b`` with each channel ``k`` of the layer zeroed in turn (float64)."""
        feats = p.feats[b:b + 1]
        n_ch = int(feats.shape[1])
        step = int(self.options["batch_size"])
        rows = []
        for i in range(0, n_ch, step):
            idx = np.arange(i, min(i + step, n_ch))
            keep = np.ones((len(idx), n_ch, 1, 1), dtype=np.float32)
            keep[np.arange(len(idx)), idx] = 0.0
            ablated = paddle.tile(feats, [len(idx), 1, 1, 1]) * paddle.to_tensor(keep)

            def hook(_layer, _inputs, _output, ablated=ablated):
                return ablated

            handle = p.layer.register_forward_post_hook(hook)
            try:
                with paddle.no_grad():
                    logits = self.model(paddle.tile(p.x[b:b + 1], [len(idx), 1, 1, 1])).numpy()
            finally:
                handle.remove()
            rows.append(logits if p.target == "logit" else activate(logits, p.activation))
        return np.concatenate(rows).astype(np.float64)

    def head_ablated_logits(self, p: Pass, b: int) -> Optional[np.ndarray]:
        """``[C, K]`` logits of image ``b`` with each channel zeroed, in closed form where the hooked layer feeds the
        model's GAP + Linear head directly (``z_k = z - mean(A^k) W[k, :]``); ``None`` elsewhere."""
        head = getattr(self.model, "head", None)
        if not (isinstance(self.model, GapLinearClassifier) and isinstance(head, nn.Linear)
                and p.layer_name == getattr(self.model, "features_layer", None) and export_blocker(self.model) is None):
            return None
        means = p.feats[b].numpy().astype(np.float64).mean(axis=(1, 2))  # [C]
        w = head.weight.numpy().astype(np.float64)  # [C, K]
        return p.logits[b].numpy().astype(np.float64)[None] - means[:, None] * w

    def class_maps(self, p: Pass, classes: List[int]) -> paddle.Tensor:
        base = p.scores.numpy().astype(np.float64)
        weights = []
        for b in range(int(p.x.shape[0])):
            y = base[b, classes]
            closed = self.head_ablated_logits(p, b)
            if closed is None:
                yk = self.ablated_scores(p, b)[:, classes]  # [C, K']
            else:
                yk = (closed if p.target == "logit" else activate(closed, p.activation).astype(np.float64))[:, classes]
            denom = np.abs(y)
            weights.append(np.where(denom > 1e-12, (y[None] - yk) / np.where(denom > 1e-12, denom, 1.0), 0.0))
        w = np.stack(weights).astype(np.float32)  # [B, C, K']
        f = p.feats.detach()
        return paddle.stack([self.weighted_sum(f, paddle.to_tensor(w[:, :, i])) for i in range(len(classes))], axis=1)
