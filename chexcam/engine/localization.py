"""The localization benchmark (``tools/eval_localization.py``): CAM boxes against NIH's ``BBox_List_2017.csv``
in the layout of Wang et al. 2017, Table 4."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Tuple

from .. import viewer
from ..config import Config, config_from_dict, save_config
from ..data import build_split
from ..data.io import read_list
from ..errors import ChexcamError, ConfigError, DataError
from ..metrics.localization import BBOX_FINDINGS, LocalizationTally, read_bbox_csv
from ..utils import nan_to_null
from ..weights import checkpoint_config, read_checkpoint
from .infer import Item, explain_images, explainer_from_config, load_model

logger = logging.getLogger(__name__)


def _find_bbox_csv(cfg: Config) -> str:
    if cfg.localization.bbox_csv:
        if not os.path.isfile(cfg.localization.bbox_csv):
            raise DataError(f"localization.bbox_csv not found: {cfg.localization.bbox_csv}")
        return cfg.localization.bbox_csv
    for d in filter(None, [cfg.data.root, cfg.data.root and os.path.join(cfg.data.root, "metadata")]):
        path = os.path.join(d, "BBox_List_2017.csv")
        if os.path.isfile(path):
            return path
    raise DataError(f"no BBox_List_2017.csv under data.root={cfg.data.root} or its metadata/ folder; "
                    "set -o localization.bbox_csv=PATH")


def training_images(cfg: Config) -> Tuple[Optional[set], str]:
    """Names of the images the checkpoint was trained on, and where that list came from.

    ``localization.train_list`` (first field per line) when set; else the ``train`` split of the config
    stored in ``model.weights`` (or of this config). ``(None, reason)`` when it cannot be listed.
    """
    if cfg.localization.train_list:
        names = read_list(cfg.localization.train_list, what="localization.train_list")
        return {os.path.basename(n) for n in names}, cfg.localization.train_list
    train_cfg, where = cfg, "this config"
    try:
        if cfg.model.weights:
            stored = checkpoint_config(read_checkpoint(cfg.model.weights))
            if stored:
                train_cfg, where = config_from_dict(stored, cfg.model.weights), f"the config in {cfg.model.weights}"
        names = {os.path.basename(s.path) for s in build_split(train_cfg, "train")}
        return names, f"the train split of {where}"
    except (ChexcamError, ImportError) as exc:
        return None, f"could not list the training split of {where}: {exc}"


def eval_localization(cfg: Config) -> dict:
    """Wang et al. 2017 Table 4 for the configured model and maps against ``BBox_List_2017.csv``.

    Returns ``{"report": text, "results": per-finding dict, "pointing": overall hit rate, "images": n,
    "train_overlap": n or None, "output_dir": folder}``; writes ``report.txt`` and ``results.json``.
    """
    gt = read_bbox_csv(_find_bbox_csv(cfg))
    labels = list(cfg.data.labels)
    findings = [f for f in BBOX_FINDINGS if f in labels]
    if not findings:
        raise ConfigError(f"data.labels ({', '.join(labels)}) has none of the box findings {', '.join(BBOX_FINDINGS)}")
    folder = cfg.localization.images or os.path.join(cfg.data.root or ".", "images")
    if not os.path.isdir(folder):
        raise DataError(f"boxed-image folder not found: {folder}; set -o localization.images=FOLDER")
    items = [Item(os.path.join(folder, n)) for n in sorted(gt) if os.path.isfile(os.path.join(folder, n))]
    if not items:
        raise DataError(f"none of the {len(gt)} boxed images of the box list is in {folder}")
    logger.info("%d of %d boxed images found in %s", len(items), len(gt), folder)
    train, source = training_images(cfg)
    names = [os.path.basename(it.path) for it in items]
    warn_lines, notes = [], []
    overlap = None
    if train is None:
        warn_lines.append(f"WARNING: {source}; cannot tell whether boxed images were seen in training")
    else:
        overlap = sum(n in train for n in names)
        listed = sum(n in train for n in gt)
        if overlap:
            warn_lines.append(f"WARNING: {overlap} of the {len(names)} boxed images evaluated are in the training "
                              f"split ({source}; {listed} of all {len(gt)} in the box list): their localization "
                              "is not a held-out measurement")
        else:
            notes.append(f"none of the {len(names)} evaluated boxed images is in the training split ({source}; "
                         f"{listed} of all {len(gt)} in the box list are)")
            logger.info(notes[-1])
    for line in warn_lines:
        logger.warning("!" * 20 + " " + line + " " + "!" * 20)
    explainer = explainer_from_config(cfg, load_model(cfg))
    tally = LocalizationTally(findings=findings)
    shown = {}  # image -> {finding: (truth, predicted, peak)} for localization.html
    for res in explain_images(cfg, explainer, items):
        per = {}
        for finding, box in gt[os.path.basename(res.item.path)]:
            per.setdefault(finding, []).append(box)
        for finding, boxes in per.items():
            if finding in findings:
                k = labels.index(finding)
                tally.add(finding, boxes, res.boxes[k], res.peaks[k])
                shown.setdefault(res.item.path, {})[finding] = (boxes, res.boxes[k], res.peaks[k])
    head = [f"Localization of {cfg.model.name} ({cfg.model.weights or 'RANDOM weights'}), method {cfg.cam.method}, "
            f"boxes: {cfg.localization.boxes}, {len(items)} of {len(gt)} boxed images, {sum(tally.boxes.values())} boxes",
            *warn_lines, *notes,
            f"pointing game, all findings: {tally.overall_pointing():.4f}", ""]
    report = "\n".join(head) + tally.table()
    outdir = os.path.join(cfg.output_dir, "localization")
    os.makedirs(outdir, exist_ok=True)
    save_config(cfg, os.path.join(outdir, "config.yaml"))
    with open(os.path.join(outdir, "report.txt"), "w", encoding="utf-8") as fh:
        fh.write(report + "\n")
    results = {f: {k: ({str(t): v for t, v in val.items()} if isinstance(val, dict) else val)
                   for k, val in r.items()} for f, r in tally.results().items()}
    summary = {"report": report, "results": results, "pointing": tally.overall_pointing(), "images": len(items),
               "train_overlap": overlap, "warnings": warn_lines, "output_dir": os.path.abspath(outdir)}
    with open(os.path.join(outdir, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(nan_to_null({k: v for k, v in summary.items() if k != "report"}), fh, indent=1)
    summary["html"] = viewer.write_localization_html(outdir, shown, "Localization: " + head[0], head[1:-1])
    return summary
