"""Figures of evaluation and training: ROC curves, confusion matrix, reliability diagram, training curves.

ROC curves, the confusion matrix and the reliability diagram are scikit-learn's displays
(``RocCurveDisplay``, ``ConfusionMatrixDisplay``, ``CalibrationDisplay``) drawn on matplotlib, the plots
this field reads. Every figure is a ``matplotlib.figure.Figure`` built without pyplot's global state, so it
renders with the Agg canvas on a machine without a display, is safe in threads, and shows in a notebook with
``display(fig)``. Knows nothing of paddle: inputs are numpy arrays and plain dicts.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

#: matplotlib's 20-colour qualitative map, so 14 ROC curves stay distinguishable
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5"]


def save(fig: Figure, path: str, dpi: int = 110) -> str:
    """Write ``fig`` as PNG (Agg) and return ``path``."""
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def _observed(y, p):
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    keep = ~np.isnan(y) & np.isfinite(p)
    return (y[keep] > 0.5).astype(int), p[keep]


def roc_figure(y_true, y_prob, labels: Sequence[str], aurocs: Optional[Sequence[Optional[float]]] = None) -> Figure:
    """ROC curve of every class with both outcomes present (``RocCurveDisplay``), legend with its AUROC.

    ``y_true``/``y_prob`` are ``[N, K]`` (NaN targets are left out per class); ``aurocs`` are the values to
    write in the legend (the report's own, with more digits than scikit-learn's label); a class without
    positives or negatives is listed as ``n/a`` with no curve.
    """
    from sklearn.metrics import RocCurveDisplay, auc, roc_curve

    y = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    p = np.asarray(y_prob, dtype=np.float64).reshape(len(y_prob), -1)
    k = len(labels)
    fig = Figure(figsize=(8.6 if k > 1 else 5.6, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="chance")
    for i, lab in enumerate(labels):
        yt, ps = _observed(y[:, i], p[:, i])
        color = _COLORS[i % len(_COLORS)]
        if len(np.unique(yt)) < 2:
            ax.plot([], [], color=color, label=f"{lab}: n/a")
            continue
        fpr, tpr, _ = roc_curve(yt, ps)
        area = aurocs[i] if aurocs is not None and aurocs[i] is not None else float(auc(fpr, tpr))
        ax.set_prop_cycle(color=[color])
        RocCurveDisplay(fpr=fpr, tpr=tpr).plot(ax=ax, name=f"{lab}: {area:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC curves (AUROC in the legend)")
    ax.grid(alpha=0.3)
    if k > 1:
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    else:
        ax.legend(loc="lower right", fontsize=9)
    return fig


def confusion_figure(cm, label: str) -> Figure:
    """2x2 confusion matrix of a binary decision (``ConfusionMatrixDisplay``), counts in the cells."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    ConfusionMatrixDisplay(confusion_matrix=np.asarray(cm, dtype=np.int64),
                           display_labels=[f"not {label}", label]).plot(ax=ax, cmap="Blues", values_format="d",
                                                                        colorbar=False)
    ax.set_title("confusion matrix (rows: truth)")
    return fig


def _grid(k: int):
    cols = 1 if k == 1 else min(5, k)
    return int(math.ceil(k / cols)), cols


def reliability_figure(calibration: Dict[str, Any], labels: Sequence[str]) -> Figure:
    """Reliability diagram per class (``CalibrationDisplay``) from :func:`chexcam.metrics.calibration.
    calibration_report`'s bins, the class's ECE in each title; bar heights under the curve count images."""
    from sklearn.calibration import CalibrationDisplay

    rows, cols = _grid(len(labels))
    fig = Figure(figsize=(3.1 * cols + 0.6, 3.0 * rows + 0.4) if len(labels) > 1 else (4.8, 4.6))
    for i, lab in enumerate(labels):
        ax = fig.add_subplot(rows, cols, i + 1)
        bins = [b for b in calibration["bins"][lab] if b["count"]]
        ece = calibration["ece"][lab]
        if bins:
            conf = np.array([b["confidence"] for b in bins])
            freq = np.array([b["frequency"] for b in bins])
            CalibrationDisplay(freq, conf, conf).plot(ax=ax, name=lab, ref_line=True)
            twin = ax.twinx()
            all_bins = calibration["bins"][lab]
            counts = np.array([b["count"] for b in all_bins], dtype=np.float64)
            centers = np.array([(b["low"] + b["high"]) / 2 for b in all_bins])
            twin.bar(centers, counts, width=1.0 / len(all_bins) * 0.9, color="#999999", alpha=0.25, zorder=0)
            twin.set_yticks([])
            twin.set_ylim(0, max(1.0, counts.max()) * 3)  # bars in the lower third, under the curve
            ax.set_zorder(twin.get_zorder() + 1)
            ax.patch.set_visible(False)
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{lab}\nECE {'n/a' if ece is None else f'{ece:.3f}'}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("mean predicted probability", fontsize=7)
        ax.set_ylabel("fraction of positives", fontsize=7)
    mean = calibration.get("mean_ece")
    fig.suptitle(f"reliability diagram ({calibration['n_bins']} equal-width bins); mean ECE "
                 f"{'n/a' if mean is None else f'{mean:.3f}'}", fontsize=10)
    fig.tight_layout()
    return fig


def read_history(path: str) -> List[Dict[str, Any]]:
    """The rows of ``history.jsonl`` (one JSON object per epoch, written by training); blank lines skipped."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def _series(rows, key):
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r.get("epoch", len(xs) + 1))
            ys.append(v)
    return xs, ys


def history_figure(rows: Sequence[Dict[str, Any]], title: Optional[str] = None) -> Figure:
    """Training curves per epoch: train/validation loss, validation AUROC (mean, and each class faintly when
    there are several) and the learning rate (log scale)."""
    fig = Figure(figsize=(13, 3.8))
    ax_loss, ax_auc, ax_lr = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    for key, name in (("train_loss", "train"), ("val_loss", "validation")):
        xs, ys = _series(rows, key)
        if xs:
            ax_loss.plot(xs, ys, marker="o", markersize=3, label=name)
    ax_loss.set_title("loss (BCE)")
    ax_loss.legend(fontsize=8)
    classes = sorted({c for r in rows for c in (r.get("val_auroc") or {})})
    if len(classes) > 1:
        for i, c in enumerate(classes):
            pts = [(r.get("epoch"), (r.get("val_auroc") or {}).get(c)) for r in rows]
            pts = [(e, v) for e, v in pts if v is not None]
            if pts:
                ax_auc.plot(*zip(*pts), color=_COLORS[i % len(_COLORS)], alpha=0.35, linewidth=1)
    xs, ys = _series(rows, "val_mean_auroc")
    if xs:
        ax_auc.plot(xs, ys, color="black", marker="o", markersize=3, linewidth=2, label="mean")
        best = int(np.argmax(ys))
        ax_auc.annotate(f"best {ys[best]:.3f} (epoch {xs[best]})", (xs[best], ys[best]), fontsize=8,
                        textcoords="offset points", xytext=(0, -14), ha="center")
        ax_auc.legend(fontsize=8)
    ax_auc.set_title("validation AUROC" + (" (classes faint)" if len(classes) > 1 else ""))
    xs, ys = _series(rows, "lr")
    if xs:
        ax_lr.plot(xs, ys, drawstyle="steps-post", marker="o", markersize=3)
        if min(ys) > 0:
            ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate")
    for ax in (ax_loss, ax_auc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def history_png(run_dir_or_file: str, out: Optional[str] = None) -> Optional[str]:
    """Plot ``history.jsonl`` (a run folder or the file itself) to ``history.png`` beside it (or ``out``);
    ``None`` when there is no history or it has no rows."""
    path = run_dir_or_file
    if os.path.isdir(path):
        path = os.path.join(path, "history.jsonl")
    if not os.path.isfile(path):
        return None
    rows = read_history(path)
    if not rows:
        return None
    return save(history_figure(rows, title=f"training history ({len(rows)} epochs)"),
                out or os.path.join(os.path.dirname(path), "history.png"))
