"""Contact sheets (``tools/render_mosaic.py``): many images x chosen classes, each as original / heatmap / boxes."""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np

from .. import viz
from ..cam import resolve_classes
from ..config import DEFAULT_MAX_PIXELS, Config
from ..data.io import read_image, read_json_file, read_maps_file
from ..errors import BadImageError, ChexcamError
from .infer import Explained, Item, explain_images, explainer_from_config, load_model, resolve_inputs

logger = logging.getLogger(__name__)


def _class_indices(cfg: Config, classes: Optional[Sequence[str]]) -> List[int]:
    return resolve_classes(classes or None, len(cfg.data.labels), cfg.data.labels)


def _truth_ok(target, k: int, truth: str) -> bool:
    return truth == "any" or (target is not None and (target[k] > 0.5) == (truth == "positive"))


def _saved_results(cfg: Config, folder: str) -> Iterator[Explained]:
    """:class:`Explained` results rebuilt from a folder of saved JSON records and ``_maps.npz`` files."""
    labels = list(cfg.data.labels)
    records = sorted(f for f in os.listdir(folder) if f.endswith(".json") and f != "summary.json")
    for f in records:
        stem = f[:-5]
        npz = os.path.join(folder, f"{stem}_maps.npz")
        path = os.path.join(folder, f)
        rec = read_json_file(path)
        if not isinstance(rec, dict) or "classes" not in rec:
            if isinstance(rec, dict):
                continue  # another tool's JSON (metrics.json, ...)
            raise ChexcamError(f"{path} is not a record of infer_cam.py: a JSON {type(rec).__name__}, not an object")
        if not isinstance(rec["classes"], dict) or not isinstance(rec.get("image"), str):
            raise ChexcamError(f"{path} is not a record of infer_cam.py: no 'classes' mapping or 'image' path")
        if not os.path.isfile(npz):
            raise ChexcamError(f"{npz} not found: run infer_cam.py with -o infer.save_npz=true to render from outputs")
        if list(rec["classes"]) != labels:
            raise ChexcamError(f"{path} has classes {list(rec['classes'])}, the config {labels}")
        try:
            img = read_image(rec["image"], cfg.data.max_pixels)
        except BadImageError as exc:
            logger.warning("skipped: %s", exc)
            continue
        maps = read_maps_file(npz)
        if maps.ndim != 3 or len(maps) != len(labels):
            raise ChexcamError(f"{npz}: 'maps' has shape {list(maps.shape)}, expected [{len(labels)}, H, W]")
        c = rec["classes"]
        try:
            target = np.array([rec["target"][n] for n in labels], np.float32) if "target" in rec else None
            yield Explained(Item(rec["image"], target), img, np.array([c[n]["probability"] for n in labels],
                                                                         dtype=np.float64), maps,
                            [np.array(c[n]["boxes"], dtype=np.float64).reshape(-1, 4) for n in labels],
                            [np.array(c[n]["box_scores"], dtype=np.float64) for n in labels],
                            [tuple(float(v) for v in c[n]["peak"]) for n in labels])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ChexcamError(f"{path} is not a record of infer_cam.py: {type(exc).__name__} {exc}"[:300]) from None


def render_sheet(cfg: Config, classes: Optional[Sequence[str]] = None, limit: int = 16, truth: str = "any",
                 source: Optional[str] = None, out: Optional[str] = None, tile: int = 128, wrap: int = 8) -> dict:
    """A contact sheet: ``limit`` images x the chosen classes, each as original / heatmap / peak boxes.

    Args:
        classes: label names (default: all of ``data.labels``).
        truth: ``positive`` / ``negative`` keeps only images whose ground truth for the first chosen class
            is so (needs ``infer.input=split:NAME`` or saved records of one); ``any`` keeps all.
        source: a folder of saved inference outputs (JSON + ``_maps.npz``); default: run the model on
            ``infer.input``.
        out: PNG path (default ``output_dir/infer.subdir/contact_sheet.png``).
    """
    if truth not in ("any", "positive", "negative"):
        raise ChexcamError(f"truth must be any, positive or negative, got '{truth}'")
    for name, value in (("limit", limit), ("tile", tile), ("wrap", wrap)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ChexcamError(f"{name} must be a whole number >= 1, got {value!r}")
    idx = _class_indices(cfg, classes)
    pixels = limit * (1 + 2 * len(idx)) * tile * tile  # the sheet: rows x (original + map and boxes per class)
    if pixels > DEFAULT_MAX_PIXELS:
        raise ChexcamError(f"the sheet would be {pixels:,} pixels ({limit} rows x {1 + 2 * len(idx)} tiles of {tile} px),"
                           f" over {DEFAULT_MAX_PIXELS:,}: lower --tile, --limit or the number of --classes")
    if source:
        if not os.path.isdir(source):
            raise ChexcamError(f"saved outputs folder not found: {source}")
        results: Iterable[Explained] = _saved_results(cfg, source)
    else:
        items = resolve_inputs(cfg)
        if truth != "any":
            if any(it.target is None for it in items):
                raise ChexcamError(f"truth={truth} needs ground truth: use -o infer.input=split:test (or val/train)")
            items = [it for it in items if _truth_ok(it.target, idx[0], truth)]
        items = items[:limit]
        if not items:
            raise ChexcamError(f"no {truth} images for class '{cfg.data.labels[idx[0]]}' in {cfg.infer.input}")
        results = explain_images(cfg, explainer_from_config(cfg, load_model(cfg)), items)
    labels = list(cfg.data.labels)
    rows, titles = [], []
    for res in results:
        if not _truth_ok(res.item.target, idx[0], truth) and source:
            if res.item.target is None:
                raise ChexcamError(f"truth={truth} needs saved records of a split input (no 'target' in them)")
            continue
        row = [viz.fit_tile(res.image, tile)]
        seg = res.segments_at(*res.size)  # LIME: the class's top superpixels outlined on its heatmap
        for k in idx:
            row += viz.cell_tiles(res.image, res.maps[k], res.boxes[k], tile, cfg.infer.colormap, cfg.infer.alpha,
                                  segments=seg, keep=None if seg is None else res.keep[k])
        rows.append(row)
        stem = os.path.splitext(os.path.basename(res.item.path))[0]
        titles.append(f"{stem[-12:]} {100 * res.probs[idx[0]]:.0f}%")
        if len(rows) >= limit:
            break
    if not rows:
        raise ChexcamError("nothing to render: no image matched")
    cols = ["original"] + [f"{labels[k][:14]} {kind}" for k in idx for kind in ("map", "boxes")]
    sheet = viz.contact_sheet(rows, titles, cols, wrap=wrap, colormap=cfg.infer.colormap)
    out = out or os.path.join(cfg.output_dir, cfg.infer.subdir, "contact_sheet.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    viz.save_png(out, sheet)
    logger.info("contact sheet of %d images x %d classes: %s", len(rows), len(idx), out)
    return {"images": len(rows), "classes": [labels[k] for k in idx], "path": os.path.abspath(out)}
