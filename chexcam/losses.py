"""Training losses: binary cross-entropy from logits that skips ignored (NaN) labels.

CheXpert and MIMIC-CXR-JPG label some findings "uncertain" (-1.0) or leave them blank. Under
``data.uncertain: ignore`` (Irvin et al. 2019's U-Ignore) or ``data.blank: ignore`` the datasets write
NaN into the float32 target; :class:`MaskedBCEWithLogitsLoss` then leaves those entries out: they add
nothing to the loss or to the gradient, and the loss is the mean over the observed entries only

    L = sum_{(i,k) observed} l(z_ik, y_ik) / #observed,
    l(z, y) = -[w_k y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]

(``w_k`` the optional positive weight of class ``k``, as in ``paddle.nn.BCEWithLogitsLoss``). With no
NaN in the target it equals ``paddle.nn.BCEWithLogitsLoss(pos_weight=w)`` exactly. A batch without any
observed entry has loss 0 and zero gradient.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import paddle
import paddle.nn.functional as F


class MaskedBCEWithLogitsLoss(paddle.nn.Layer):
    """Drop-in for ``paddle.nn.BCEWithLogitsLoss(pos_weight=...)`` that skips NaN targets.

    Args:
        pos_weight: optional ``[K]`` tensor of positive-class weights (e.g. negatives / positives).
    """

    def __init__(self, pos_weight: Optional[paddle.Tensor] = None):
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        return masked_bce_with_logits(logits, target, self.pos_weight)


def masked_bce_with_logits(logits: paddle.Tensor, target: paddle.Tensor,
                           pos_weight: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """Mean binary cross-entropy from ``logits`` over the entries of ``target`` that are not NaN."""
    observed = paddle.logical_not(paddle.isnan(target))
    safe = paddle.where(observed, target, paddle.zeros_like(target))
    per_entry = F.binary_cross_entropy_with_logits(logits, safe, reduction="none", pos_weight=pos_weight)
    weight = observed.astype(per_entry.dtype)
    # where() rather than a product: a masked entry's gradient is exactly zero even if its term is inf
    total = paddle.where(observed, per_entry, paddle.zeros_like(per_entry)).sum()
    return total / paddle.clip(weight.sum(), min=1.0)


def needs_masking(cfg) -> bool:
    """Whether ``cfg``'s data can hold ignored (NaN) labels: ``data.uncertain`` or ``data.blank`` is ignore."""
    return cfg.data.uncertain == "ignore" or cfg.data.blank == "ignore"


def build_loss(cfg, pos_weight: Optional[paddle.Tensor] = None) -> paddle.nn.Layer:
    """The training loss for ``cfg``: :class:`MaskedBCEWithLogitsLoss` when labels may be ignored, else
    ``paddle.nn.BCEWithLogitsLoss``, so that a NaN target where none is expected still makes the loss
    NaN and stops training (a broken label column must not be silently skipped)."""
    if needs_masking(cfg):
        return MaskedBCEWithLogitsLoss(pos_weight=pos_weight)
    return paddle.nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def pos_weight_from_targets(targets: np.ndarray) -> np.ndarray:
    """Per-class negatives / positives over the observed (non-NaN) entries of ``[N, K]`` targets.

    1.0 for a class without positives. (A plain ``sum`` would turn every class with an ignored label
    into NaN, and ``NaN > 0`` into a silent weight of 1.)
    """
    y = np.asarray(targets, dtype=np.float64)
    observed = ~np.isnan(y)
    pos = np.where(observed, y, 0.0).sum(0)
    neg = observed.sum(0) - pos
    return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0).astype(np.float32)
