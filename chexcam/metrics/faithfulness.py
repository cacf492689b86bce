"""Faithfulness of saliency maps: deletion / insertion AUC, Average Drop and Increase in Confidence.

All take a ``predict`` callable mapping a ``[N, 3, H, W]`` float32 batch to sigmoid probabilities
``[N, K]`` (:func:`predictor` makes one from a model) and score one class of a multi-label head by its
own sigmoid probability.

- Deletion / insertion (Petsiuk et al., "RISE", BMVC 2018): remove (deletion) or reveal (insertion) the
  pixels in order of decreasing saliency, ``steps`` equal chunks, and take the area under the curve of
  the class probability against the fraction of pixels changed (trapezoid rule on [0, 1]). A faithful
  map gives a low deletion AUC and a high insertion AUC. Deleted pixels take ``baseline`` (default 0, the
  dataset mean in normalized input space); insertion starts from a blurred copy of the image.
- Average Drop and Increase in Confidence (Chattopadhay et al., "Grad-CAM++", WACV 2018): with ``Y`` the
  probability on the image and ``O`` on the image multiplied by its map,
  ``Average Drop = 100/N sum max(0, Y - O) / Y`` and ``Increase in Confidence = 100/N sum [O > Y]``.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import cv2
import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


def predictor(model, batch_size: int = 32) -> Predict:
    """``x [N, 3, H, W] -> sigmoid probabilities [N, K]`` for a chexcam model (eval mode, no gradients)."""
    import paddle
    import paddle.nn.functional as F

    from ..cam.base import eval_mode

    def predict(x: np.ndarray) -> np.ndarray:
        out = []
        with eval_mode(model), paddle.no_grad():
            for i in range(0, len(x), batch_size):
                xb = paddle.to_tensor(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32))
                out.append(F.sigmoid(model(xb)).numpy())
        return np.concatenate(out, axis=0)

    return predict


def blur(x: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """Gaussian blur of a ``[3, H, W]`` image, channel by channel (insertion's starting canvas)."""
    return np.stack([cv2.GaussianBlur(np.ascontiguousarray(c, dtype=np.float32), (0, 0), sigma) for c in x])


def _curve(predict: Predict, start: np.ndarray, end: np.ndarray, saliency: np.ndarray, target: int,
           steps: int, batch_size: int) -> np.ndarray:
    """Probability of ``target`` as pixels switch from ``start`` to ``end`` in decreasing saliency order."""
    if saliency.shape != start.shape[1:]:
        raise ValueError(f"saliency {list(saliency.shape)} must match the image's spatial size {list(start.shape[1:])}")
    s = np.nan_to_num(np.asarray(saliency, dtype=np.float64), nan=-np.inf).ravel()
    order = np.argsort(-s, kind="stable")
    n = order.size
    cuts = np.rint(np.linspace(0, n, steps + 1)).astype(np.int64)
    probs = []
    for i in range(0, steps + 1, batch_size):
        batch = []
        for k in cuts[i:i + batch_size]:
            img = start.reshape(start.shape[0], -1).copy()
            idx = order[:k]
            img[:, idx] = end.reshape(end.shape[0], -1)[:, idx]
            batch.append(img.reshape(start.shape))
        probs.append(np.asarray(predict(np.stack(batch).astype(np.float32)))[:, target])
    return np.concatenate(probs).astype(np.float64)


def auc(curve: np.ndarray) -> float:
    """Trapezoid area under a curve sampled at equal steps on [0, 1]."""
    c = np.asarray(curve, dtype=np.float64)
    return float((c.sum() - 0.5 * (c[0] + c[-1])) / (len(c) - 1))


def deletion_auc(predict: Predict, x: np.ndarray, saliency: np.ndarray, target: int, steps: int = 20,
                 baseline: Optional[np.ndarray] = None, batch_size: int = 32) -> Tuple[float, np.ndarray]:
    """Deletion AUC (lower is better) and its curve for one ``[3, H, W]`` image and ``[H, W]`` saliency."""
    base = np.zeros_like(x) if baseline is None else np.broadcast_to(baseline, x.shape)
    curve = _curve(predict, x, base, saliency, target, steps, batch_size)
    return auc(curve), curve


def insertion_auc(predict: Predict, x: np.ndarray, saliency: np.ndarray, target: int, steps: int = 20,
                  baseline: Optional[np.ndarray] = None, batch_size: int = 32) -> Tuple[float, np.ndarray]:
    """Insertion AUC (higher is better) and its curve; starts from ``baseline`` (default: blurred ``x``)."""
    base = blur(x) if baseline is None else np.broadcast_to(baseline, x.shape)
    curve = _curve(predict, base, x, saliency, target, steps, batch_size)
    return auc(curve), curve


def explanation_map_inputs(x: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """``x * map``: each ``[N, 3, H, W]`` image multiplied by its ``[N, H, W]`` map in [0, 1] (NaN -> 0)."""
    m = np.clip(np.nan_to_num(maps, nan=0.0), 0.0, 1.0)
    return (x * m[:, None]).astype(np.float32)


def average_drop(p_full: np.ndarray, p_masked: np.ndarray) -> float:
    """Average Drop in percent: ``100 * mean(max(0, Y - O) / Y)`` (lower is better)."""
    y = np.asarray(p_full, dtype=np.float64)
    o = np.asarray(p_masked, dtype=np.float64)
    return float(100.0 * np.mean(np.maximum(0.0, y - o) / np.maximum(y, 1e-12)))


def increase_in_confidence(p_full: np.ndarray, p_masked: np.ndarray) -> float:
    """Increase in Confidence in percent: ``100 * mean(O > Y)`` (higher is better)."""
    return float(100.0 * np.mean(np.asarray(p_masked) > np.asarray(p_full)))
