"""Evaluation: the CheXNet AUROC table (with bootstrap CIs and the paper's figures) or binary metrics.

Multi-label (``num_classes > 1``): per-class AUROC and their mean with percentile-bootstrap confidence
intervals beside the CheXNet paper's per-class figures, per-class F1 at the threshold that maximizes it
on the validation split, ROC curves as a PNG. Binary (``num_classes == 1``): accuracy, precision,
recall, F1 and AUROC at ``eval.threshold``, the confusion matrix as a table and a PNG. Everything goes
into ``output_dir`` (``metrics.json``, ``report.md``, ``roc.png``, ``confusion.png``). Plots are drawn
with OpenCV (already a dependency) rather than matplotlib.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import paddle
from tqdm import tqdm

from ..config import Config, save_config
from ..data.chexpert import map_labels
from ..data.datasets import ImageDataset, build_split, build_splits, iterate, make_loader
from ..errors import ChexcamError
from ..labels import CHESTXRAY14_LABELS, CHEXNET_PAPER_AUROC
from ..metrics import classification as M
from ..models import build_model
from ..utils import seed_everything, set_device

logger = logging.getLogger(__name__)


def predict(model: paddle.nn.Layer, dataset: ImageDataset, batch_size: int, num_workers: int = 0,
            on_bad_image: str = "error", skipped: Optional[Dict[str, str]] = None,
            progress: bool = False) -> Dict[str, Any]:
    """Run ``model`` over ``dataset`` in eval mode (train/eval flag restored).

    Returns ``probs`` ``[N, K]`` (sigmoid; the mean over crops with ten-crop), ``logits`` (``None`` with
    ten-crop), ``targets`` ``[N, K]`` and ``indices`` into ``dataset.samples`` (bad images left out).
    """
    was_training = model.training
    model.eval()
    loader, sampler = make_loader(dataset, batch_size, False, 0, num_workers)
    probs, logits, targets, indices = [], [], [], []
    batches = iterate(loader, sampler, dataset, 0, on_bad_image, skipped)
    if progress:
        batches = tqdm(batches, total=len(sampler), desc="evaluate", unit="batch")
    try:
        with paddle.no_grad():
            for x, y, idx in batches:
                if dataset.ten_crop:
                    b, n = int(x.shape[0]), int(x.shape[1])
                    z = model(x.reshape([b * n] + list(x.shape[2:])))
                    p = paddle.nn.functional.sigmoid(z).reshape([b, n, -1]).mean(axis=1)
                else:
                    z = model(x)
                    logits.append(z.numpy())
                    p = paddle.nn.functional.sigmoid(z)
                probs.append(p.numpy())
                targets.append(y.numpy())
                indices.append(idx)
    finally:
        if was_training:
            model.train()
    k = dataset.num_classes
    cat = (lambda a: np.concatenate(a).astype(np.float64)) if probs else (lambda a: np.zeros((0, k)))
    return {"probs": cat(probs), "logits": None if dataset.ten_crop else cat(logits),
            "targets": cat(targets), "indices": np.concatenate(indices) if indices else np.zeros(0, np.int64)}


def _weights(cfg: Config) -> str:
    if cfg.model.weights:
        return cfg.model.weights
    best = os.path.join(cfg.output_dir, "best.pdparams")
    if os.path.isfile(best):
        return best
    raise ChexcamError(f"no model.weights given and no {best}: train first or pass -o model.weights=PATH")


def run(cfg: Config) -> Dict[str, Any]:
    """Evaluate ``model.weights`` (default ``output_dir/best.pdparams``) on ``eval.split``."""
    set_device(cfg.device)
    seed_everything(cfg.seed)
    weights = _weights(cfg)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=weights))
    out = cfg.output_dir
    os.makedirs(out, exist_ok=True)
    save_config(cfg, os.path.join(out, "eval_config.yaml"))
    model = build_model(cfg)
    # the model's head classes paired with the dataset's labels (cross-dataset evaluation, chexcam.labels)
    pairs, skipped_classes = map_labels(list(cfg.data.labels), cfg.data.dataset)
    if not pairs:
        raise ChexcamError(f"none of the model's classes ({', '.join(cfg.data.labels)}) is a label of dataset "
                           f"'{cfg.data.dataset}' or has a counterpart there")
    cols, model_labels, labels = [k for k, _, _ in pairs], [m for _, m, _ in pairs], [d for _, _, d in pairs]
    data_cfg = cfg if labels == list(cfg.data.labels) else \
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, labels=labels))
    for m, d in zip(model_labels, labels):
        if m != d:
            logger.info("model class %s evaluated as %s's %s", m, cfg.data.dataset, d)
    split = cfg.eval.split
    samples = build_split(data_cfg, split)
    if not samples:
        raise ChexcamError(f"the {split} split of dataset '{cfg.data.dataset}' is empty; set eval.split")
    skipped: Dict[str, str] = {}
    ds = ImageDataset(samples, data_cfg, train=False, ten_crop=cfg.eval.ten_crop)
    res = predict(model, ds, cfg.eval.batch_size, cfg.data.num_workers, cfg.data.on_bad_image, skipped,
                  progress=True)
    y, p = res["targets"], res["probs"][:, cols]
    if len(y) == 0:
        raise ChexcamError(f"every image of the {split} split was skipped as bad")
    metrics: Dict[str, Any] = {
        "split": split, "images": int(len(y)), "skipped": len(skipped), "skipped_files": skipped,
        "weights": weights, "ten_crop": bool(cfg.eval.ten_crop), "dataset": cfg.data.dataset,
        "labels_release": build_splits(data_cfg).info.get("labels_release"),
        "label_map": {m: d for m, d in zip(model_labels, labels) if m != d}, "skipped_classes": skipped_classes,
    }
    ci = M.bootstrap_auroc(y, p, n=cfg.eval.bootstrap, ci=cfg.eval.ci, seed=cfg.seed)
    aurocs = M.per_class_auroc(y, p)
    notes = [f"{lab}: no {'positives' if M.count_positives(y[:, k]) == 0 else 'negatives'} in the {split} split, "
             f"AUROC undefined" for k, lab in enumerate(labels) if aurocs[k] is None]
    metrics["notes"] = notes
    metrics["mean_auroc"] = M.mean_auroc(aurocs)
    metrics["mean_auroc_ci"] = [ci["mean_low"], ci["mean_high"]]
    metrics["ci_level"] = cfg.eval.ci
    if len(cfg.data.labels) == 1:
        metrics["binary"] = M.binary_report(y[:, 0], p[:, 0], cfg.eval.threshold)
        metrics["binary"]["auroc_ci"] = [ci["low"][0], ci["high"][0]]
        table = _binary_table(metrics["binary"], labels[0], cfg.eval.ci)
        _confusion_png(os.path.join(out, "confusion.png"), metrics["binary"]["confusion"], labels[0])
    else:
        thresholds = _val_thresholds(data_cfg, model, split, y, p, skipped, cols)
        per_class = []
        for k, (lab, head) in enumerate(zip(labels, model_labels)):
            paper = CHEXNET_PAPER_AUROC[CHESTXRAY14_LABELS.index(head)] if head in CHESTXRAY14_LABELS else None
            thr = thresholds[k]
            per_class.append({
                "label": lab, "model_class": head, "positives": M.count_positives(y[:, k]),
                "ignored": int(np.isnan(y[:, k]).sum()), "auroc": aurocs[k],
                "auroc_ci": [ci["low"][k], ci["high"][k]], "chexnet_paper": paper,
                "f1_threshold": thr, "f1": None if thr is None else M.f1_at(y[:, k], p[:, k], thr),
            })
        metrics["per_class"] = per_class
        metrics["chexnet_paper_mean"] = float(np.mean(CHEXNET_PAPER_AUROC))
        table = _auroc_table(per_class, metrics, cfg.eval.ci)
    _roc_png(os.path.join(out, "roc.png"), y, p, labels, aurocs)
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(metrics, fh, indent=2)
    report = os.path.join(out, "report.md")
    with open(report, "w", encoding="utf-8") as fh:
        fh.write(f"# Evaluation of `{weights}` on the {split} split ({len(y)} images)\n\n")
        fh.write(table + "\n")
        for note in notes:
            fh.write(f"\n- Note: {note}")
        if skipped_classes:
            fh.write(f"\n\n## Model classes skipped on {cfg.data.dataset}\n\n"
                     "No one-to-one counterpart among the dataset's labels (see `chexcam/labels.py`):\n")
            for lab, reason in skipped_classes.items():
                fh.write(f"\n- {lab}: {reason}")
            fh.write("\n")
        if skipped:
            fh.write(f"\n\n{len(skipped)} bad image(s) skipped: " + ", ".join(sorted(skipped)) + "\n")
        plots = "![ROC](roc.png)" + ("  ![confusion](confusion.png)" if len(cfg.data.labels) == 1 else "")
        fh.write(f"\n\n{plots}\n")
    for note in notes:
        logger.warning(note)
    for lab, reason in skipped_classes.items():
        logger.warning("model class %s skipped on %s: %s", lab, cfg.data.dataset, reason)
    logger.info("wrote %s, %s and plots to %s", "metrics.json", "report.md", out)
    return {"output_dir": out, "metrics": metrics, "table": table, "report": report}


def _val_thresholds(cfg: Config, model, split: str, y, p, skipped, cols: List[int]) -> List[Optional[float]]:
    """Per-class F1-optimal thresholds from the validation split (the eval split itself if it is val)."""
    if split != "val":
        val = build_split(cfg, "val")
        if val:
            ds = ImageDataset(val, cfg, train=False, ten_crop=cfg.eval.ten_crop)
            r = predict(model, ds, cfg.eval.batch_size, cfg.data.num_workers, cfg.data.on_bad_image, skipped)
            y, p = r["targets"], r["probs"][:, cols]
        else:
            logger.warning("no val split: F1 thresholds chosen on the %s split itself (optimistic)", split)
    return [M.best_f1_threshold(y[:, k], p[:, k]) for k in range(y.shape[1])]


def _f(v: Optional[float], nd: int = 4) -> str:
    return "null" if v is None else f"{v:.{nd}f}"


def _ci(pair: Sequence[Optional[float]]) -> str:
    lo, hi = pair
    return "n/a" if lo is None or hi is None else f"{lo:.3f}-{hi:.3f}"


def _auroc_table(rows, metrics, ci_level: float) -> str:
    pct = int(round(100 * ci_level))
    lines = [f"| finding | positives | AUROC | {pct}% CI | CheXNet paper | F1 (val threshold) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        thr = "" if r["f1_threshold"] is None else f" (t={r['f1_threshold']:.3f})"
        name = r["label"] if r["model_class"] == r["label"] else f"{r['label']} (model: {r['model_class']})"
        lines.append(f"| {name} | {r['positives']} | {_f(r['auroc'])} | {_ci(r['auroc_ci'])} | "
                     f"{_f(r['chexnet_paper'])} | {_f(r['f1'], 3)}{thr} |")
    lines.append(f"| **mean** | | **{_f(metrics['mean_auroc'])}** | {_ci(metrics['mean_auroc_ci'])} | "
                 f"{metrics['chexnet_paper_mean']:.4f} | |")
    return "\n".join(lines)


def _binary_table(b: Dict[str, Any], label: str, ci_level: float) -> str:
    (tn, fp), (fn, tp) = b["confusion"]
    pct = int(round(100 * ci_level))
    return "\n".join([
        f"| metric ({label} = positive, threshold {b['threshold']:.2f}) | value |", "|---|---:|",
        f"| images (positives) | {b['n']} ({b['positives']}) |",
        f"| accuracy | {b['accuracy']:.4f} |", f"| precision | {b['precision']:.4f} |",
        f"| recall | {b['recall']:.4f} |", f"| F1 | {b['f1']:.4f} |",
        f"| AUROC ({pct}% CI) | {_f(b['auroc'])} ({_ci(b['auroc_ci'])}) |",
        "", "| true \\ predicted | negative | positive |", "|---|---:|---:|",
        f"| negative | {tn} | {fp} |", f"| positive | {fn} | {tp} |",
    ])


_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 128, 0),
           (0, 128, 128), (128, 0, 128)]


def _save_rgb(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise ChexcamError(f"cannot write {path}")


def _roc_png(path: str, y, p, labels: Sequence[str], aurocs) -> None:
    """ROC curves of every class with an AUROC, one colour each, legend on the right."""
    size, pad, legend = 480, 50, 250
    img = np.full((size + 2 * pad, size + 2 * pad + legend, 3), 255, np.uint8)
    x0, y0 = pad, pad + size

    def pt(fx, fy):
        return int(round(x0 + fx * size)), int(round(y0 - fy * size))

    for t in np.linspace(0, 1, 6):
        cv2.line(img, pt(t, 0), pt(t, 1), (230, 230, 230), 1)
        cv2.line(img, pt(0, t), pt(1, t), (230, 230, 230), 1)
        cv2.putText(img, f"{t:.1f}", (pt(t, 0)[0] - 10, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{t:.1f}", (x0 - 32, pt(0, t)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.line(img, pt(0, 0), pt(1, 1), (160, 160, 160), 1, cv2.LINE_AA)
    cv2.rectangle(img, pt(0, 1), pt(1, 0), (0, 0, 0), 1)
    cv2.putText(img, "false positive rate", (x0 + size // 2 - 70, y0 + 38), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "true positive rate", (4, pad - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    row = 0
    for k, lab in enumerate(labels):
        color = _COLORS[k % len(_COLORS)]
        pts = M.roc_points(y[:, k], p[:, k])
        text = f"{lab}: {'n/a' if aurocs[k] is None else f'{aurocs[k]:.3f}'}"
        if pts is not None:
            poly = np.array([pt(a, b) for a, b in zip(*pts)], np.int32)
            cv2.polylines(img, [poly], False, color, 2, cv2.LINE_AA)
        ly = pad + 14 + 20 * row
        cv2.line(img, (size + 2 * pad, ly - 4), (size + 2 * pad + 20, ly - 4), color, 3)
        cv2.putText(img, text, (size + 2 * pad + 26, ly), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        row += 1
    _save_rgb(path, img)


def _confusion_png(path: str, cm, label: str) -> None:
    """2x2 confusion matrix, cells shaded by their share of the row (true class)."""
    names = [f"not {label}", label]
    width = max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)[0][0] for n in names)
    cell, pad = max(140, width + 20), max(110, width + 14)
    img = np.full((2 * cell + pad + 20, 2 * cell + pad + 20, 3), 255, np.uint8)
    cm = np.asarray(cm)
    for i in range(2):
        total = max(1, cm[i].sum())
        for j in range(2):
            share = cm[i, j] / total
            shade = int(255 - 180 * share)
            x, y_ = pad + j * cell, pad + i * cell
            cv2.rectangle(img, (x, y_), (x + cell, y_ + cell), (shade, shade, 255), -1)
            cv2.rectangle(img, (x, y_), (x + cell, y_ + cell), (0, 0, 0), 1)
            cv2.putText(img, str(int(cm[i, j])), (x + cell // 2 - 18, y_ + cell // 2 + 10),
                        cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(img, names[i], (4, pad + i * cell + cell // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        cv2.putText(img, names[i], (pad + i * cell + 10, pad - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.putText(img, "true \\ predicted", (4, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    _save_rgb(path, img)
