"""Evaluation: the CheXNet AUROC table (with bootstrap CIs and the paper's figures) or binary metrics.

Multi-label (``num_classes > 1``): per-class AUROC and their mean with percentile-bootstrap confidence
intervals beside the CheXNet paper's per-class figures, per-class F1 at the threshold that maximizes it
on the validation split, ROC curves as a PNG. Binary (``num_classes == 1``): accuracy, precision,
recall, F1 and AUROC at ``eval.threshold``, the confusion matrix as a table and a PNG. Both: the expected
calibration error per class with a reliability diagram, and the training curves when ``output_dir`` has the
run's ``history.jsonl``. Everything goes into ``output_dir`` (``metrics.json``, ``report.md``,
``report.html``, ``roc.png``, ``confusion.png``, ``reliability.png``, ``history.png``); the plots are
scikit-learn's displays on matplotlib (:mod:`chexcam.plots`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import paddle
from tqdm import tqdm

from .. import plots, viewer
from ..config import Config, save_config
from ..data.chexpert import map_labels
from ..data.datasets import ImageDataset, build_split, build_splits, iterate, make_loader
from ..errors import BadImageError, ChexcamError
from ..labels import CHESTXRAY14_LABELS, CHEXNET_PAPER_AUROC
from ..metrics import calibration as C
from ..metrics import classification as M
from ..models import build_model
from ..utils import seed_everything, set_device
from .infer import explainer_from_config
from .pipeline import Shelf, Stages, dist_env, gather, init_dist, shard, steady_rate, workers_for

logger = logging.getLogger(__name__)


def predict(model: paddle.nn.Layer, dataset: ImageDataset, batch_size: int, num_workers: int = 0,
            on_bad_image: str = "error", skipped: Optional[Dict[str, str]] = None,
            progress: bool = False, explainer=None, stages: Optional[Stages] = None) -> Dict[str, Any]:
    """Run ``model`` over ``dataset`` in eval mode (train/eval flag restored).

    Returns ``probs`` ``[N, K]`` (sigmoid; the mean over crops with ten-crop), ``logits`` (``None`` with
    ten-crop or the predictor), ``targets`` ``[N, K]`` and ``indices`` into ``dataset.samples`` (bad images
    left out).

    With an ``explainer`` (:class:`chexcam.Explainer`, built once for the run) the probabilities come from its
    Paddle Inference predictor when it has one (equal to the dynamic graph within 1e-5), images are decoded by
    the worker processes of ``stages`` (whose context holds ``dataset``) ahead of the model, and under
    ``paddle.distributed.launch`` each rank predicts every ``world``-th image and every rank gets all of them
    back, in dataset order. Without one: paddle's DataLoader with ``num_workers`` (training's validation).
    """
    if explainer is not None:
        return _predict_streaming(model, explainer, dataset, batch_size, on_bad_image, skipped, progress, stages)
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


def _load_sample(datasets, job, shelf: Shelf):
    """Worker task: item ``i`` of dataset ``d`` of the pool's context, preprocessed (the crops on the shelf)."""
    d, i, slot = job
    x, y, idx, ok = datasets[d][i]
    return shelf.put(x), y, idx, ok, slot


def _predict_streaming(model, explainer, dataset: ImageDataset, batch_size: int, on_bad_image: str,
                       skipped: Optional[Dict[str, str]], progress: bool, stages: Optional[Stages]) -> Dict[str, Any]:
    own = stages is None
    stages = Stages(0, (dataset,)) if own else stages
    d = next(k for k, ds in enumerate(stages.context) if ds is dataset)
    rank, world = dist_env()
    mine = shard(range(len(dataset)), rank, world)
    fast = explainer.engine == "predictor"
    was_training = model.training
    model.eval()
    probs, logits, targets, indices, bad = [], [], [], [], {}
    bar = tqdm(total=len(mine), desc="evaluate", unit="img", disable=not progress or rank != 0)

    def flush(batch):
        x = np.concatenate([b[0] for b in batch]) if dataset.ten_crop else np.stack([b[0] for b in batch])
        if fast:
            p = explainer(x, normalize=False, upsample=False)[0]
        else:
            with paddle.no_grad():
                z = model(paddle.to_tensor(x))
            p = paddle.nn.functional.sigmoid(z).numpy()
            if not dataset.ten_crop:
                logits.append(z.numpy())
        if dataset.ten_crop:
            p = p.reshape(len(batch), -1, p.shape[-1]).mean(axis=1)
        probs.append(p)
        targets.append(np.stack([b[1] for b in batch]))
        indices.append(np.array([b[2] for b in batch], dtype=np.int64))
        bar.update(len(batch))
        times.extend([time.time()] * len(batch))

    t0, times = time.time(), []
    try:
        batch = []
        def inputs():
            for i in mine:
                slot = stages.new_slot()
                yield (d, i, slot), slot

        for stored, y, i, ok, slot in stages.map(_load_sample, inputs(), ahead=2 * batch_size + stages.processes,
                                                 cancellable=True):
            x = np.array(stages.shelf(slot).get(stored))  # out of the slot, which is free again
            stages.free_slot(slot)
            if ok < 0.5:
                reason = dataset.error_of(int(i))
                if on_bad_image == "error":
                    raise BadImageError(reason)
                logger.warning("skipped bad image: %s", reason)
                bad[dataset.samples[int(i)].path] = reason
                bar.update(1)
                continue
            batch.append((x, y, int(i)))
            if len(batch) >= batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    finally:
        bar.close()
        if was_training:
            model.train()
        if own:
            stages.close()
    seconds = time.time() - t0
    steady = steady_rate(times, batch_size)
    k = dataset.num_classes
    cat = (lambda a, dt: np.concatenate(a).astype(dt)) if probs else (lambda a, dt: np.zeros((0, k), dt))
    part = {"probs": cat(probs, np.float64), "targets": cat(targets, np.float64),
            "logits": cat(logits, np.float64) if logits else None, "bad": bad, "seconds": seconds, "steady": steady,
            "indices": np.concatenate(indices) if indices else np.zeros(0, np.int64)}
    parts = gather(part, world)
    idx = np.concatenate([q["indices"] for q in parts])
    order = np.argsort(idx, kind="stable")
    out = {key: np.concatenate([q[key] for q in parts])[order] for key in ("probs", "targets")}
    out["indices"] = idx[order]
    out["logits"] = np.concatenate([q["logits"] for q in parts])[order] \
        if all(q["logits"] is not None for q in parts) and not dataset.ten_crop else None
    if skipped is not None:
        for q in parts:
            for path, reason in q["bad"].items():
                skipped.setdefault(path, reason)
    slowest = max(q["seconds"] for q in parts)
    rates = [q["steady"] for q in parts if q["steady"]]
    speed = f"{sum(rates):.2f} images/s in steady state" if rates else "too few batches for a steady-state rate"
    logger.info("predicted %d images in %.1f s (%s, %s engine, %d worker processes, %d rank(s))",
                len(out["indices"]), slowest, speed, explainer.engine, stages.processes, world)
    return out


def _predictions(cfg: Config, data_cfg: Config, model, ds: ImageDataset, split: str, skipped: Dict[str, str]):
    """The eval split's predictions and, for the F1 thresholds of a multi-label model, the val split's: one
    Explainer (``infer.engine``, probabilities only), ``infer.workers`` processes decoding ahead of it, every
    rank taking part. ``(test, val or None)``."""
    val = None
    if len(cfg.data.labels) > 1 and split != "val":
        samples = build_split(data_cfg, "val")
        val = ImageDataset(samples, data_cfg, train=False, ten_crop=cfg.eval.ten_crop) if samples else None
    _, world = dist_env()
    processes = workers_for(cfg.infer.workers)
    if world > 1 and not cfg.infer.workers:
        processes = max(1, processes // world)
    crops = (10 if cfg.eval.ten_crop else 1) * 3 * cfg.data.crop * cfg.data.crop * 4
    slots = 3 * cfg.eval.batch_size + 2 * processes + 2
    with Stages(processes, (ds, val), slot_bytes=crops + 256, slots=slots) as stages:  # forked before the predictor
        explainer = explainer_from_config(cfg, model, method="cam")
        res = predict(model, ds, cfg.eval.batch_size, 0, cfg.data.on_bad_image, skipped, progress=True,
                      explainer=explainer, stages=stages)
        val_res = None if val is None else predict(model, val, cfg.eval.batch_size, 0, cfg.data.on_bad_image,
                                                   skipped, explainer=explainer, stages=stages)
    return res, val_res


def _weights(cfg: Config) -> str:
    if cfg.model.weights:
        return cfg.model.weights
    best = os.path.join(cfg.output_dir, "best.pdparams")
    if os.path.isfile(best):
        return best
    raise ChexcamError(f"no model.weights given and no {best}: train first or pass -o model.weights=PATH")


def run(cfg: Config) -> Dict[str, Any]:
    """Evaluate ``model.weights`` (default ``output_dir/best.pdparams``) on ``eval.split``.

    Under ``paddle.distributed.launch`` every rank predicts its share; rank 0 alone computes and writes the
    metrics (other ranks return ``metrics: None``)."""
    set_device(cfg.device)
    rank, _ = init_dist()
    seed_everything(cfg.seed)
    weights = _weights(cfg)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=weights))
    out = cfg.output_dir
    os.makedirs(out, exist_ok=True)
    if rank == 0:
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
    res, val_res = _predictions(cfg, data_cfg, model, ds, split, skipped)
    if rank != 0:
        return {"output_dir": out, "metrics": None, "table": None, "report": None, "rank": rank}
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
        thresholds = _val_thresholds(val_res, split, y, p, cols)
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
    metrics["calibration"] = _calibration_png(os.path.join(out, "reliability.png"), y, p, labels)
    history = plots.history_png(out)  # the training curves, when output_dir is the training run's folder
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
        mean_ece = metrics["calibration"]["mean_ece"]
        fh.write(f"\n\nExpected calibration error ({metrics['calibration']['n_bins']} equal-width bins), mean over "
                 f"classes: {'n/a' if mean_ece is None else f'{mean_ece:.4f}'} (per class in metrics.json and "
                 "report.html)\n")
        figs = "![ROC](roc.png)" + ("  ![confusion](confusion.png)" if len(cfg.data.labels) == 1 else "")
        figs += "  ![reliability](reliability.png)" + ("  ![training curves](history.png)" if history else "")
        fh.write(f"\n{figs}\n")
    report_html = viewer.write_report_html(out, metrics)
    for note in notes:
        logger.warning(note)
    for lab, reason in skipped_classes.items():
        logger.warning("model class %s skipped on %s: %s", lab, cfg.data.dataset, reason)
    logger.info("wrote %s, %s, %s and plots to %s", "metrics.json", "report.md", "report.html", out)
    return {"output_dir": out, "metrics": metrics, "table": table, "report": report, "report_html": report_html}


def _val_thresholds(val_res: Optional[Dict[str, Any]], split: str, y, p, cols: List[int]) -> List[Optional[float]]:
    """Per-class F1-optimal thresholds from the validation split's predictions (the eval split itself if it is
    val, or when there is no val split)."""
    if val_res is not None:
        y, p = val_res["targets"], val_res["probs"][:, cols]
    elif split != "val":
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


def _roc_png(path: str, y, p, labels: Sequence[str], aurocs) -> None:
    """ROC curves of every class with an AUROC (scikit-learn's ``RocCurveDisplay``), AUROC in the legend."""
    plots.save(plots.roc_figure(y, p, labels, aurocs), path)


def _confusion_png(path: str, cm, label: str) -> None:
    """2x2 confusion matrix (scikit-learn's ``ConfusionMatrixDisplay``)."""
    plots.save(plots.confusion_figure(cm, label), path)


def _calibration_png(path: str, y, p, labels: Sequence[str], n_bins: int = 10) -> Dict[str, Any]:
    """Per-class ECE and reliability bins (for metrics.json) and the reliability diagram at ``path``."""
    cal = C.calibration_report(y, p, labels, n_bins)
    plots.save(plots.reliability_figure(cal, labels), path)
    return cal
