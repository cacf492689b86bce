"""Which explanation to trust (``tools/compare_methods.py``): every method on one model and one split.

For each method (by default ``cam``, ``gradcam``, ``gradcampp``, ``lime``; any registered ones, or all of them:
``tools/compare_methods.py --methods all``), on the ground-truth positive (image, class) pairs of a split of the
configured data, with the maps of a :class:`chexcam.Explainer` built once per method (with its options from the
config: ``cam.*`` and ``methods.<name>``, ``lime``):

- **faithfulness** (:mod:`chexcam.metrics.faithfulness`): deletion AUC (lower is better) and insertion AUC
  (higher) of the class probability, 20 steps; Average Drop (lower) and Increase in Confidence (higher) with the
  image multiplied by its ReLU'd, min-max normalized map;
- **boxes** where a box list exists (``localization.bbox_csv`` or ``BBox_List_2017.csv`` under ``data.root``):
  pointing game and accuracy at T(IoBB) in {0.1, 0.25, 0.5} over the boxed findings, maps and boxes in the
  original image's pixels as ``tools/eval_localization.py`` computes them;
- **stain** for the malaria dataset (:mod:`chexcam.metrics.stain`): the map maximum within 4 px and 8 px (at a
  96 px input) of Giemsa stain, and the share of the area of the map's peak boxes that is stain, with the map
  centre as a baseline row;
- **speed**: milliseconds per image of the method's Explainer call (batches of ``infer.batch_size``).

Faithfulness forward passes run through one fast :meth:`chexcam.Explainer.predict` for every method, so their
cost does not enter the method's time. Writes ``report.md``, ``results.json`` and ``curves.png`` (the mean
deletion and insertion curves; matplotlib) and ``examples.png``: the first images with every method's map (LIME's
with the boundaries of its five strongest positive superpixels) and, for malaria, the stain the rule finds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from .. import viz
from ..boxes import boxes_for_maps, peak_point
from ..cam import LimeResult, list_cam_methods
from ..config import Config, save_config
from ..data import build_split
from ..data.io import read_image
from ..data.transforms import eval_transform, normalize
from ..errors import BadImageError, ChexcamError, DataError
from ..metrics import faithfulness as F
from ..metrics import stain as S
from ..metrics.localization import LocalizationTally, read_bbox_csv
from ..postprocess import postprocess
from ..serving import Explainer
from ..utils import nan_to_null
from .infer import cam_layer_of, lime_config, load_model, method_config
from .localization import _find_bbox_csv

logger = logging.getLogger(__name__)

METHODS = ("cam", "gradcam", "gradcampp", "lime")
IOBB = (0.1, 0.25, 0.5)
STEPS = 20
#: images drawn in ``examples.png`` (the first of the split)
GALLERY = 8


@dataclasses.dataclass
class Case:
    """One image of the split with its positive classes."""

    path: str
    x: np.ndarray            # [3, H, W] network input
    view: np.ndarray         # [H, W, 3] uint8: what the network sees, before normalization
    geometry: object         # chexcam.data.transforms.Geometry
    classes: List[int]


def _weights(cfg: Config) -> Config:
    """``model.weights``, or ``output_dir/best.pdparams`` when it exists (as ``tools/eval.py``)."""
    if cfg.model.weights or cfg.model.allow_random:
        return cfg
    best = os.path.join(cfg.output_dir, "best.pdparams")
    if not os.path.isfile(best):
        raise ChexcamError(f"no model.weights given and no {best}: train first or pass -o model.weights=PATH")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=best))


def _positives(cfg: Config, split: str, limit: Optional[int]) -> list:
    """The samples of ``split`` with at least one positive label (the first ``limit``)."""
    samples = [s for s in build_split(cfg, split) if np.nansum(s.target) > 0]
    if limit:
        samples = samples[:limit]
    if not samples:
        raise ChexcamError(f"the {split} split has no image with a positive label to explain")
    return samples


def _load(cfg: Config, tf, samples) -> List[Case]:
    """Decode a batch of samples (bad images follow ``data.on_bad_image``)."""
    out = []
    for s in samples:
        try:
            img = read_image(s.path)
        except BadImageError as exc:
            if cfg.data.on_bad_image == "error":
                raise
            logger.warning("skipped: %s", exc)
            continue
        view, geo = tf.geometry_and_crop(img)
        out.append(Case(s.path, normalize(view, cfg.data.mean, cfg.data.std), np.ascontiguousarray(view), geo,
                        [int(k) for k in np.flatnonzero(np.nan_to_num(s.target) > 0.5)]))
    return out


def _box_truth(cfg: Config):
    """``{image name: [(finding, box)]}`` when a box list is configured or found, else ``None``."""
    try:
        return read_bbox_csv(_find_bbox_csv(cfg))
    except DataError as exc:
        logger.info("no box metrics: %s", exc)
        return None


class _Tally:
    """Per-method running sums."""

    def __init__(self, labels: Sequence[str], tolerances: Sequence[float]):
        self.rows: Dict[str, list] = defaultdict(list)  # faithfulness rows per (image, class)
        self.curves_del: List[np.ndarray] = []
        self.curves_ins: List[np.ndarray] = []
        self.seconds, self.images = 0.0, 0
        self.boxes = LocalizationTally(findings=list(labels), iobb_thresholds=IOBB, iou_thresholds=())
        self.stain_hits = {t: 0 for t in tolerances}
        self.stain_n, self.stain_share = 0, []


def _stain_of(case: Case):
    mask = S.stain_mask(case.view)
    return mask if mask.sum() >= S.MIN_PIXELS else None


def compare_methods(cfg: Config, methods: Sequence[str] = METHODS, split: Optional[str] = None,
                    limit: Optional[int] = None, lime_options: Optional[dict] = None, progress: bool = True) -> dict:
    """Score every method on the positives of ``split`` (default ``eval.split``); writes the report files.

    Returns ``{"methods": {name: metrics}, "cases": n, "images": n, "report": markdown, "output_dir": ...}``.
    """
    split = split or cfg.eval.split
    cfg = _weights(cfg)
    known = list_cam_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ChexcamError(f"unknown method '{unknown[0]}' to compare; expected some of {', '.join(known)} (or all)")
    samples = _positives(cfg, split, limit)
    tf = eval_transform(cfg)
    model = load_model(cfg)
    labels = list(cfg.data.labels)
    crop = int(cfg.data.crop)
    malaria = cfg.data.dataset == "malaria"
    tol = S.scaled_tolerances(crop) if malaria else ()
    gt = _box_truth(cfg) if not malaria else None
    kw = dict(engine=cfg.infer.engine, precision=cfg.export.precision, threads=cfg.export.cpu_threads,
              mkldnn=cfg.export.mkldnn, device="gpu" if cfg.device == "gpu" else None)
    layer = cam_layer_of(cfg)
    judge = Explainer(model, method="cam", **kw) if "cam" not in methods or layer else None
    lime_opts = lime_config(cfg, lime_options)
    explainers = {}
    for m in methods:
        opts = lime_opts if m == "lime" else method_config(cfg, m)
        explainers[m] = Explainer(model, method=m, layer=None if m == "lime" else layer, **kw, **opts)
        logger.info("%s on the %s engine", m, explainers[m].engine)
    predict = (judge or explainers["cam"]).predict
    tallies = {m: _Tally(labels, tol) for m in methods}
    centre = {t: 0 for t in tol}
    centre_n = n_images = n_cases = 0
    gallery: List[dict] = []
    bs = int(cfg.infer.batch_size)
    bar = tqdm(total=len(samples), desc="compare", unit="img", disable=not progress)
    for i in range(0, len(samples), bs):
        chunk = _load(cfg, tf, samples[i:i + bs])
        bar.update(len(samples[i:i + bs]))
        if not chunk:
            continue
        n_images += len(chunk)
        n_cases += sum(len(c.classes) for c in chunk)
        x = np.stack([c.x for c in chunk])
        stains = [_stain_of(c) for c in chunk] if malaria else [None] * len(chunk)
        for s in stains:
            if s is not None:
                centre_n += 1
                hits = S.stain_pointing((crop / 2.0, crop / 2.0), s, tol)
                for t in tol:
                    centre[t] += hits[t]
        shown = [{"case": c, "stain": s, "maps": {}} for c, s in zip(chunk, stains)][:GALLERY - len(gallery)]
        for m, ex in explainers.items():
            t0 = time.perf_counter()
            result = ex(x, normalize=False, upsample=True)
            probs, maps = result
            tally = tallies[m]
            tally.seconds += time.perf_counter() - t0
            tally.images += len(chunk)
            _score_chunk(cfg, tally, predict, chunk, probs, maps, stains, gt, tol)
            for j, g in enumerate(shown):
                k = g["case"].classes[0]
                keep = result.top_superpixels(j, k, cfg.lime.top) if isinstance(result, LimeResult) else None
                g["maps"][m] = (maps[j, k], probs[j, k], None if keep is None else (result.segments[j], keep))
        gallery.extend(shown)
    bar.close()
    results = {m: _summary(t, gt is not None, malaria) for m, t in tallies.items()}
    if malaria:
        results["centre (baseline)"] = {"stain_n": centre_n, **{f"stain_within_{t:g}px": _div(centre[t], centre_n)
                                                              for t in tol}}
    engines = {m: ex.engine for m, ex in explainers.items()}
    shown_opts = {k: v for k, v in lime_opts.items() if k not in ("mean", "std")} if "lime" in methods else {}
    report = _report(cfg, split, n_images, n_cases, results, engines, tol, gt is not None, malaria, shown_opts)
    outdir = os.path.join(cfg.output_dir, "compare")
    os.makedirs(outdir, exist_ok=True)
    save_config(cfg, os.path.join(outdir, "config.yaml"))
    with open(os.path.join(outdir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(report)
    curves = {m: (np.mean(t.curves_del, axis=0), np.mean(t.curves_ins, axis=0)) for m, t in tallies.items()}
    figure = plot_curves(curves, os.path.join(outdir, "curves.png"))
    examples = draw_examples(gallery, labels, list(methods), os.path.join(outdir, "examples.png"),
                             cfg.infer.colormap, cfg.infer.alpha)
    summary = {"split": split, "images": n_images, "cases": n_cases, "weights": cfg.model.weights,
               "engines": engines, "methods": results, "lime_options": shown_opts,
               "curves": {m: {"deletion": c[0].tolist(), "insertion": c[1].tolist()} for m, c in curves.items()},
               "output_dir": os.path.abspath(outdir), "figure": figure, "examples": examples}
    with open(os.path.join(outdir, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(nan_to_null(summary), fh, indent=1)
    summary["report"] = report
    return summary


def _score_chunk(cfg, tally: _Tally, predict, chunk: Sequence[Case], probs, maps, stains, gt, tol) -> None:
    crop = int(cfg.data.crop)
    pairs = [(j, k) for j, case in enumerate(chunk) for k in case.classes]
    units = postprocess(np.stack([maps[j, k] for j, k in pairs])[:, None], None, "minmax", relu=True)[:, 0]
    masked = predict(F.explanation_map_inputs(np.stack([chunk[j].x for j, _ in pairs]), units))
    for n, (j, k) in enumerate(pairs):
        d_auc, i_auc, d_curve, i_curve = F.deletion_insertion(predict, chunk[j].x, maps[j, k], k, STEPS)
        tally.rows["deletion_auc"].append(d_auc)
        tally.rows["insertion_auc"].append(i_auc)
        tally.rows["p_full"].append(float(probs[j, k]))
        tally.rows["p_masked"].append(float(masked[n, k]))
        tally.curves_del.append(d_curve)
        tally.curves_ins.append(i_curve)
    for j, case in enumerate(chunk):
        if stains[j] is not None:
            k = case.classes[0]
            peak = peak_point(maps[j, k])
            hits = S.stain_pointing(peak, stains[j], tol)
            tally.stain_n += 1
            for t in tol:
                tally.stain_hits[t] += hits[t]
            boxes, _, _ = boxes_for_maps(maps[j, k][None], cfg.localization, crop, 1.0, 1.0)
            tally.stain_share.append(S.box_stain_share(boxes[0], stains[j]))
        if gt is not None:
            per = defaultdict(list)
            for finding, box in gt.get(os.path.basename(case.path), []):
                per[finding].append(box)
            labels = list(cfg.data.labels)
            wanted = [(f, b) for f, b in per.items() if f in labels]
            if wanted:
                full = case.geometry.maps_to_original(maps[j])
                full = postprocess(full[None], None, cfg.cam.normalize)[0]
                g = case.geometry
                boxes, _, peaks = boxes_for_maps(full, cfg.localization, crop, g.sx, g.sy)
                for finding, b in wanted:
                    k = labels.index(finding)
                    tally.boxes.add(finding, b, boxes[k], peaks[k])


def _div(a, n) -> float:
    return float(a) / n if n else float("nan")


def _summary(t: _Tally, boxes: bool, malaria: bool) -> dict:
    r = t.rows
    out = {
        "cases": len(r["deletion_auc"]),
        "deletion_auc": float(np.mean(r["deletion_auc"])) if r["deletion_auc"] else float("nan"),
        "insertion_auc": float(np.mean(r["insertion_auc"])) if r["insertion_auc"] else float("nan"),
        "average_drop": F.average_drop(r["p_full"], r["p_masked"]) if r["p_full"] else float("nan"),
        "increase_in_confidence": F.increase_in_confidence(r["p_full"], r["p_masked"]) if r["p_full"] else float("nan"),
        "ms_per_image": _div(1000.0 * t.seconds, t.images),
    }
    if boxes:
        nb, ni = sum(t.boxes.boxes.values()), sum(t.boxes.images.values())
        out["box_images"] = ni
        out["pointing"] = _div(sum(t.boxes.pointing.values()), ni)
        for i, thr in enumerate(IOBB):
            out[f"iobb_{thr:g}"] = _div(sum(int(v[i]) for v in t.boxes.hits_iobb.values()), nb)
    if malaria:
        out["stain_n"] = t.stain_n
        for thr, hits in t.stain_hits.items():
            out[f"stain_within_{thr:g}px"] = _div(hits, t.stain_n)
        share = [s for s in t.stain_share if s == s]
        out["box_stain_share"] = float(np.mean(share)) if share else float("nan")
    return out


def _fmt(v, pct=False) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _report(cfg, split, n_images, n_cases, results, engines, tol, boxes, malaria, lime_options) -> str:
    cols = ["method", "deletion AUC (lower)", "insertion AUC (higher)", "Average Drop % (lower)",
            "Increase in Confidence % (higher)"]
    if boxes:
        cols += ["pointing game"] + [f"T(IoBB)={t:g} acc." for t in IOBB]
    if malaria:
        cols += [f"max within {t * 96 / cfg.data.crop:g} px of stain (at 96 px)" for t in tol] + ["box area on stain"]
    cols += ["ms / image", "engine"]
    lines = [f"# Which explanation to trust: {cfg.model.name} ({cfg.model.weights or 'RANDOM weights'})", "",
             f"{n_cases} positive (image, class) pairs on {n_images} images of the `{split}` split of "
             f"`{cfg.data.dataset}`, {cfg.data.crop} px input. Faithfulness: {STEPS}-step deletion (pixels set to "
             "the dataset mean) and insertion (from a blurred copy) of the class probability; Average Drop and "
             "Increase in Confidence with the image times its ReLU'd, min-max normalized map.", ""]
    if malaria:
        lines += [f"Stain: Giemsa-stained pixels by the CIELAB rule of `chexcam.metrics.stain` (darker than the cell's "
                  f"median L* by {S.DARK:g} and bluer by {S.BLUE:g} b*), on the {results[next(iter(engines))]['stain_n']} "
                  f"parasitized cells with stain; boxes: `localization.boxes={cfg.localization.boxes}`.", ""]
    if lime_options:
        lines += [f"LIME options: {', '.join(f'{k}={v}' for k, v in lime_options.items())}.", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m, r in results.items():
        if m not in engines:
            row = [m, "", "", "", ""] + ([""] * (1 + len(IOBB)) if boxes else [])
            row += [_fmt(r.get(f"stain_within_{t:g}px"), True) for t in tol] + ["", "", ""]
        else:
            row = [m, _fmt(r["deletion_auc"]), _fmt(r["insertion_auc"]), f"{r['average_drop']:.1f}",
                   f"{r['increase_in_confidence']:.1f}"]
            if boxes:
                row += [_fmt(r["pointing"], True)] + [_fmt(r[f"iobb_{t:g}"], True) for t in IOBB]
            if malaria:
                row += [_fmt(r[f"stain_within_{t:g}px"], True) for t in tol] + [_fmt(r["box_stain_share"], True)]
            row += [f"{r['ms_per_image']:.1f}", engines[m]]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return "\n".join(lines)


def draw_examples(gallery: Sequence[dict], labels: Sequence[str], methods: Sequence[str], path: str,
                  colormap: str = "jet", alpha: float = 0.4, tile: int = 128) -> Optional[str]:
    """One row per image: the network's view, the stain the rule finds (malaria), each method's map of the image's
    first positive class (min-max normalized; LIME's with its top-5 superpixel boundaries)."""
    if not gallery:
        return None
    stain = any(g["stain"] is not None for g in gallery)
    rows, titles = [], []
    for g in gallery:
        view = g["case"].view
        row = [viz.fit_tile(view, tile)]
        if stain:
            mask = g["stain"] if g["stain"] is not None else np.zeros(view.shape[:2], bool)
            row.append(viz.fit_tile(S.overlay_stain(view, mask), tile))
        for m in methods:
            sal, _, lime = g["maps"][m]
            unit = postprocess(sal[None, None], None, "minmax")[0, 0]
            t = viz.overlay(view, unit, colormap, alpha)
            if lime is not None:
                t = viz.mark_superpixels(t, lime[0], lime[1])
            row.append(viz.fit_tile(t, tile))
        rows.append(row)
        k = g["case"].classes[0]
        titles.append(f"{labels[k]} {100 * g['maps'][methods[0]][1]:.0f}%")
    cols = ["image"] + (["stain"] if stain else []) + list(methods)
    viz.save_png(path, viz.contact_sheet(rows, titles, cols, wrap=GALLERY, colormap=colormap))
    return path


def plot_curves(curves: Dict[str, tuple], path: str) -> Optional[str]:
    """Mean deletion and insertion curves of every method side by side (matplotlib); the path, or ``None`` when
    matplotlib is not installed (then a warning)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install matplotlib)", path)
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for m, (dele, ins) in curves.items():
        t = np.linspace(0, 1, len(dele))
        axes[0].plot(t, dele, label=f"{m} ({F.auc(dele):.3f})")
        axes[1].plot(t, ins, label=f"{m} ({F.auc(ins):.3f})")
    for ax, title in zip(axes, ("deletion (lower is better)", "insertion (higher is better)")):
        ax.set_title(title)
        ax.set_xlabel("fraction of pixels changed")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("class probability")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["METHODS", "compare_methods", "plot_curves"]
