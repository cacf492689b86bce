"""Classification metrics on top of scikit-learn: per-class AUROC with bootstrap CIs, F1, confusion.

A class whose targets are all 0 (or all 1) has no defined AUROC: it is reported as ``None`` (``null`` in
JSON) with a note, never as a silent 0 or a crash, and it is left out of the mean.

A NaN target is an ignored label (CheXpert/MIMIC-CXR uncertain or blank labels under ``ignore``, see
``chexcam.losses``): every metric here leaves it out, per class (AUROC of class ``k`` is computed on the
images whose label ``k`` is not NaN; the other classes of the same image still count).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def _2d(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def _observed(y_true, y_score):
    """``(y > 0.5, score)`` of one class restricted to its non-NaN labels."""
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    keep = ~np.isnan(y)
    return y[keep] > 0.5, s[keep]


def count_positives(y_true) -> int:
    """Positive labels of one class, ignored (NaN) labels not counted."""
    return int(np.nansum(np.asarray(y_true, dtype=np.float64) > 0.5))


def auroc(y_true: Sequence[float], y_score: Sequence[float]) -> Optional[float]:
    """AUROC of one class over its non-NaN labels, or ``None`` when only one label value is present."""
    y, y_score = _observed(y_true, y_score)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, y_score))


def per_class_auroc(y_true, y_score) -> List[Optional[float]]:
    """AUROC per column of ``[N, K]`` arrays (``None`` for a column without both classes)."""
    y, p = _2d(y_true), _2d(y_score)
    return [auroc(y[:, k], p[:, k]) for k in range(y.shape[1])]


def mean_auroc(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean over the classes that have an AUROC (``None`` when none has)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def bootstrap_auroc(y_true, y_score, n: int = 1000, ci: float = 0.95, seed: int = 0) -> Dict[str, object]:
    """Percentile bootstrap CIs of each class's AUROC and of the mean (images resampled together).

    Resamples in which a class lacks positives or negatives are skipped for that class; ignored (NaN)
    labels are left out per class. Returns ``{"low": [K], "high": [K], "mean_low": x, "mean_high": x}``
    (``None`` where undefined).
    """
    yf, p = _2d(y_true), _2d(y_score)
    y, obs = yf > 0.5, ~np.isnan(yf)
    num, k = y.shape
    out: Dict[str, object] = {"low": [None] * k, "high": [None] * k, "mean_low": None, "mean_high": None}
    if n <= 0 or num < 2:
        return out
    rng = np.random.default_rng(seed)
    samples = [[] for _ in range(k)]
    means = []
    defined = [auroc(yf[:, c], p[:, c]) is not None for c in range(k)]
    masked = [not obs[:, c].all() for c in range(k)]
    for _ in range(n):
        idx = rng.integers(0, num, num)
        vals = []
        for c in range(k):
            if not defined[c]:
                continue
            yc, pc = y[idx, c], p[idx, c]
            if masked[c]:
                keep = obs[idx, c]
                yc, pc = yc[keep], pc[keep]
            if yc.all() or not yc.any():
                continue
            v = float(roc_auc_score(yc, pc))
            samples[c].append(v)
            vals.append(v)
        if vals and len(vals) == sum(defined):
            means.append(float(np.mean(vals)))
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    for c in range(k):
        if samples[c]:
            out["low"][c] = float(np.percentile(samples[c], lo_q))
            out["high"][c] = float(np.percentile(samples[c], hi_q))
    if means:
        out["mean_low"], out["mean_high"] = float(np.percentile(means, lo_q)), float(np.percentile(means, hi_q))
    return out


def best_f1_threshold(y_true, y_score) -> Optional[float]:
    """The probability threshold maximizing F1 of one class (``None`` without positives)."""
    y, y_score = _observed(y_true, y_score)
    if not y.any():
        return None
    prec, rec, thr = precision_recall_curve(y, y_score)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)[:-1]
    return float(thr[int(np.argmax(f1))]) if len(thr) else None


def f1_at(y_true, y_score, threshold: float) -> float:
    y, y_score = _observed(y_true, y_score)
    return float(f1_score(y, y_score >= threshold, zero_division=0))


def roc_points(y_true, y_score):
    """``(fpr, tpr)`` of one class, or ``None`` when undefined."""
    y, y_score = _observed(y_true, y_score)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, y_score)
    return fpr, tpr


def binary_report(y_true, y_score, threshold: float = 0.5) -> Dict[str, object]:
    """Accuracy, precision, recall, F1, AUROC and the confusion matrix ``[[TN, FP], [FN, TP]]``."""
    y, p = _observed(y_true, y_score)
    pred = p >= threshold
    cm = confusion_matrix(y, pred, labels=[False, True])
    return {
        "n": int(len(y)), "positives": int(y.sum()), "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auroc": auroc(y, p),
        "confusion": cm.astype(int).tolist(),
    }


def bce_loss(y_true, logits) -> float:
    """Mean binary cross-entropy from logits (numerically stable) over the non-NaN labels, for reports."""
    y, z = _2d(y_true), _2d(logits)
    keep = ~np.isnan(y)
    y, z = y[keep], z[keep]
    val = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    return float(val.mean()) if val.size else math.nan
