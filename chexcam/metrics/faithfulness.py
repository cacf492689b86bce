"""Faithfulness of saliency maps: deletion / insertion AUC, Average Drop and Increase in Confidence.

All take a ``predict`` callable mapping a ``[N, 3, H, W]`` float32 batch to probabilities ``[N, K]``
(:func:`predictor` makes one from a model, ``chexcam.Explainer(model).predict`` is the fast one) and score one
class by its own probability (its sigmoid in a multi-label head, its softmax output in a softmax head).

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


def predictor(model, batch_size: int = 32, activation: str = "sigmoid") -> Predict:
    """``x [N, 3, H, W] -> probabilities [N, K]`` of a model's dynamic graph (eval mode, no gradients);
    ``activation``: ``sigmoid`` (chexcam's heads) or ``softmax``."""
    import paddle

    from ..cam.base import activate, check_activation, eval_mode

    check_activation(activation)

    def predict(x: np.ndarray) -> np.ndarray:
        out = []
        with eval_mode(model), paddle.no_grad():
            for i in range(0, len(x), batch_size):
                xb = paddle.to_tensor(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32))
                out.append(activate(model(xb).numpy(), activation))
        return np.concatenate(out, axis=0)

    return predict


def blur(x: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """Gaussian blur of a ``[3, H, W]`` image, channel by channel (insertion's starting canvas)."""
    return np.stack([cv2.GaussianBlur(np.ascontiguousarray(c, dtype=np.float32), (0, 0), sigma) for c in x])


def _curve_inputs(start: np.ndarray, end: np.ndarray, saliency: np.ndarray, steps: int) -> np.ndarray:
    """The ``steps + 1`` images ``[steps + 1, 3, H, W]`` on the way from ``start`` to ``end``, pixels switched in
    decreasing saliency order (ties in row-major order; NaN last)."""
    if saliency.shape != start.shape[1:]:
        raise ValueError(f"saliency {list(saliency.shape)} must match the image's spatial size {list(start.shape[1:])}")
    s = np.nan_to_num(np.asarray(saliency, dtype=np.float64), nan=-np.inf).ravel()
    order = np.argsort(-s, kind="stable")
    cuts = np.rint(np.linspace(0, order.size, steps + 1)).astype(np.int64)
    src, dst = start.reshape(start.shape[0], -1), end.reshape(end.shape[0], -1)
    out = np.empty((steps + 1,) + start.shape, np.float32)
    for i, k in enumerate(cuts):
        img = src.copy()
        idx = order[:k]
        img[:, idx] = dst[:, idx]
        out[i] = img.reshape(start.shape)
    return out


def _predict_batched(predict: Predict, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([np.asarray(predict(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def _curve(predict: Predict, start: np.ndarray, end: np.ndarray, saliency: np.ndarray, target: int,
           steps: int, batch_size: int) -> np.ndarray:
    """Probability of ``target`` as pixels switch from ``start`` to ``end`` in decreasing saliency order."""
    batch = _curve_inputs(start, end, saliency, steps)
    return _predict_batched(predict, batch, batch_size)[:, target].astype(np.float64)


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


def deletion_insertion(predict: Predict, x: np.ndarray, saliency: np.ndarray, target: int, steps: int = 20,
                       baseline: Optional[np.ndarray] = None, batch_size: int = 64
                       ) -> Tuple[float, float, np.ndarray, np.ndarray]:
    """Both curves of one image with their ``2 (steps + 1)`` images in as few forward passes as ``batch_size``
    allows: ``(deletion AUC, insertion AUC, deletion curve, insertion curve)``, as :func:`deletion_auc` and
    :func:`insertion_auc` with their default canvases (``baseline`` for deletion, the blurred image for insertion)."""
    base = np.zeros_like(x) if baseline is None else np.broadcast_to(baseline, x.shape)
    batch = np.concatenate([_curve_inputs(x, base, saliency, steps), _curve_inputs(blur(x), x, saliency, steps)])
    p = _predict_batched(predict, batch, batch_size)[:, target].astype(np.float64)
    dele, ins = p[:steps + 1], p[steps + 1:]
    return auc(dele), auc(ins), dele, ins


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
