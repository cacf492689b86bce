"""Calibration of sigmoid probabilities: reliability bins and the expected calibration error (ECE).

For each class, the probabilities are put in ``n_bins`` equal-width bins on [0, 1]; in each bin the mean
predicted probability (confidence) is compared with the observed frequency of positives:

    ECE = sum_b (n_b / N) * |frequency_b - confidence_b|

(Naeini et al., AAAI 2015; Guo et al., "On Calibration of Modern Neural Networks", ICML 2017), the
per-class form used for multi-label sigmoid outputs. Empty bins contribute nothing. NaN targets (ignored
labels) are left out per class, as in :mod:`chexcam.metrics.classification`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def reliability_bins(y_true, y_prob, n_bins: int = 10) -> Dict[str, object]:
    """Reliability table and ECE of one class.

    Returns ``{"ece": float or None, "n": observed images, "bins": [{"low", "high", "count", "confidence",
    "frequency"}, ...]}`` (``confidence``/``frequency`` are ``None`` for an empty bin; ``ece`` is ``None``
    when no label is observed).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    keep = ~np.isnan(y) & np.isfinite(p)
    y, p = (y[keep] > 0.5).astype(np.float64), np.clip(p[keep], 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds edges[b] <= p < edges[b+1]; p == 1 goes to the last bin
    idx = np.minimum(np.searchsorted(edges, p, side="right") - 1, n_bins - 1)
    bins: List[Dict[str, Optional[float]]] = []
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        conf = float(p[sel].mean()) if n else None
        freq = float(y[sel].mean()) if n else None
        if n:
            ece += n / len(p) * abs(freq - conf)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": n,
                     "confidence": conf, "frequency": freq})
    return {"ece": float(ece) if len(p) else None, "n": int(len(p)), "bins": bins}


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> Optional[float]:
    """ECE of one class (``None`` when no label is observed)."""
    return reliability_bins(y_true, y_prob, n_bins)["ece"]


def calibration_report(y_true, y_prob, labels: Sequence[str], n_bins: int = 10) -> Dict[str, object]:
    """Per-class ECE and reliability tables for ``[N, K]`` targets and probabilities.

    Returns ``{"n_bins", "strategy": "uniform", "ece": {label: value}, "mean_ece", "bins": {label: [...]}}``;
    ``mean_ece`` is over the classes with observed labels.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    per = {lab: reliability_bins(y[:, k], p[:, k], n_bins) for k, lab in enumerate(labels)}
    eces = [r["ece"] for r in per.values() if r["ece"] is not None]
    return {"n_bins": int(n_bins), "strategy": "uniform", "ece": {lab: r["ece"] for lab, r in per.items()},
            "mean_ece": float(np.mean(eces)) if eces else None, "bins": {lab: r["bins"] for lab, r in per.items()}}
