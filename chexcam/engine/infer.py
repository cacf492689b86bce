"""Per-image CAM inference: mosaics, JSON records and boxes in the original image's pixels.

Everything streams: inputs are listed as paths (never decoded up front), decoded ``infer.batch_size`` at a
time, explained by one :class:`chexcam.Explainer` built once for the run, mapped back to the original image's
pixels, written, and dropped. Memory does not grow with the number of images. Contact sheets are in
:mod:`chexcam.engine.sheets`, the localization benchmark in :mod:`chexcam.engine.localization`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from .. import viz
from ..boxes import boxes_for_maps
from ..config import Config, save_config
from ..data import build_split
from ..data.io import list_images, read_image, read_list
from ..data.transforms import TenCrop, crops_to_original, eval_transform
from ..errors import BadImageError, ChexcamError
from ..models import build_model, require_weights
from ..postprocess import normalize_maps
from ..serving import Explainer
from ..utils import seed_everything, set_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One input: its path and, for a dataset split, its 0/1 target ``[K]``."""

    path: str
    target: Optional[np.ndarray] = None


@dataclass
class Explained:
    """One image explained, everything in the original image's pixel coordinates.

    ``maps [K, H, W]`` normalized per ``cam.normalize``, NaN where no crop saw the image; ``boxes[k]``
    ``[n, 4]`` (x1, y1, x2, y2) with ``scores[k]``; ``peaks[k]`` the ``(x, y)`` of map ``k``'s maximum.
    """

    item: Item
    image: np.ndarray
    probs: np.ndarray
    maps: np.ndarray
    boxes: List[np.ndarray]
    scores: List[np.ndarray]
    peaks: List[Tuple[float, float]]


# ---------------------------------------------------------------------------------------------
# inputs


def resolve_inputs(cfg: Config) -> List[Item]:
    """``infer.input`` -> items: ``split:NAME`` of the configured dataset, a .csv/.txt list, or files."""
    spec = cfg.infer.input
    if not spec:
        raise ChexcamError("infer.input is not set: pass -o infer.input=IMAGE|FOLDER|GLOB|LIST.csv|split:test")
    if spec.startswith("split:"):
        samples = build_split(cfg, spec.split(":", 1)[1])
        if not samples:
            raise ChexcamError(f"infer.input={spec}: the split is empty")
        return [Item(s.path, np.asarray(s.target, dtype=np.float32)) for s in samples]
    if os.path.isfile(spec) and spec.lower().endswith((".csv", ".txt")):
        names = read_list(spec, cfg.data.path_column, what="infer.input list")
        if not names:
            raise ChexcamError(f"infer.input list {spec} names no images")
        base = os.path.dirname(os.path.abspath(spec))
        return [Item(n if os.path.isabs(n) else os.path.join(base, n)) for n in names]
    return [Item(p) for p in list_images(spec)]


# ---------------------------------------------------------------------------------------------
# the model, its Explainer, and the maps of one batch in the original frame


def load_model(cfg: Config):
    """Device, seed, the weights guard and the model, as every inference tool starts."""
    require_weights(cfg)
    set_device(cfg.device)
    seed_everything(cfg.seed)
    return build_model(cfg)


def explainer_from_config(cfg: Config, model) -> Explainer:
    """The run's :class:`chexcam.Explainer`: ``cam.method``/``cam.layer`` on ``infer.engine``, with the
    ``export`` section's predictor settings (threads, oneDNN, precision, TensorRT)."""
    device = "gpu" if cfg.device == "gpu" else None
    ex = Explainer(model, method=cfg.cam.method, engine=cfg.infer.engine, precision=cfg.export.precision,
                   layer=cfg.cam.layer, device=device, threads=cfg.export.cpu_threads, mkldnn=cfg.export.mkldnn,
                   tensorrt=cfg.export.tensorrt)
    logger.info("explaining with %s on the %s engine (%s)", cfg.cam.method, ex.engine, ex.precision)
    return ex


def _batches(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def explain_images(cfg: Config, explainer: Explainer, items: Sequence[Item],
                   on_bad: Optional[Callable[[str], None]] = None, progress: bool = True) -> Iterator[Explained]:
    """Stream :class:`Explained` results over ``items``, ``infer.batch_size`` images per forward pass.

    Raw maps (ReLU per ``cam.relu``) go back to the original image (bilinear, or nearest cells when
    ``cam.upsample`` is false; ten crops averaged), are normalized there per ``cam.normalize`` and boxed.
    A file that cannot be decoded is logged, passed to ``on_bad`` and skipped.
    """
    tf = eval_transform(cfg)
    ten = TenCrop(cfg.data.resize, cfg.data.crop, cfg.data.mean, cfg.data.std, cfg.data.resize_mode) \
        if cfg.infer.ten_crop else None
    interp = "linear" if cfg.cam.upsample else "nearest"
    bar = tqdm(total=len(items), desc="infer", unit="img", disable=not progress)
    try:
        for batch in _batches(items, cfg.infer.batch_size):
            good, xs, geos = [], [], []
            for item in batch:
                try:
                    img = read_image(item.path)
                except BadImageError as exc:
                    logger.warning("skipped: %s", exc)
                    if on_bad:
                        on_bad(str(exc))
                    bar.update(1)
                    continue
                if ten is not None:
                    x, g = ten.crops_and_geometry(img)
                else:
                    x, g = tf(img)
                    x, g = x[None], [g]
                good.append((item, img))
                xs.append(x)
                geos.append(g)
            if not good:
                continue
            probs, maps = explainer(np.concatenate(xs), normalize=False, upsample=False, relu=cfg.cam.relu)
            per = 10 if ten is not None else 1
            for j, (item, img) in enumerate(good):
                p = probs[j * per:(j + 1) * per].mean(axis=0)
                full = crops_to_original(maps[j * per:(j + 1) * per], geos[j], interp)
                full = normalize_maps(full, cfg.cam.normalize, inplace=True)
                geo = geos[j][-1]
                boxes, scores, peaks = boxes_for_maps(full, cfg.localization, cfg.data.crop, geo.sx, geo.sy)
                yield Explained(item, img, p, full, boxes, scores, peaks)
                bar.update(1)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# per-image outputs


def _unique_stem(path: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def record_of(cfg: Config, res: Explained) -> dict:
    """The JSON record of one image: probability, decision, boxes (original pixels) and peak per class."""
    labels = list(cfg.data.labels)
    rec = {
        "image": os.path.abspath(res.item.path),
        "size": [int(res.image.shape[1]), int(res.image.shape[0])],
        "model": cfg.model.name, "weights": cfg.model.weights, "method": cfg.cam.method,
        "ten_crop": bool(cfg.infer.ten_crop), "boxes_mode": cfg.localization.boxes,
        "box_format": "x1,y1,x2,y2 original pixels",
        "classes": {},
    }
    if res.item.target is not None:
        rec["target"] = {name: int(t) for name, t in zip(labels, res.item.target)}
    for k, name in enumerate(labels):
        rec["classes"][name] = {
            "probability": round(float(res.probs[k]), 6),
            "positive": bool(res.probs[k] >= cfg.infer.threshold),
            "boxes": [[round(float(v), 1) for v in b] for b in res.boxes[k]],
            "box_scores": [round(float(s), 4) for s in res.scores[k]],
            "peak": [round(v, 1) for v in res.peaks[k]],
        }
    return rec


def write_outputs(cfg: Config, res: Explained, outdir: str, stem: str) -> None:
    """Mosaic PNG, JSON record and (``infer.save_npz``) the maps of one image."""
    labels = list(cfg.data.labels)
    titles = [f"{name}: {100 * p:.1f}%" for name, p in zip(labels, res.probs)]
    order = list(np.argsort(-res.probs, kind="stable")) if cfg.infer.sort else None
    draw = cfg.infer.draw_boxes
    boxes = None
    if draw != "none":
        boxes = [b if draw == "all" or p >= cfg.infer.threshold else [] for b, p in zip(res.boxes, res.probs)]
    sheet = viz.mosaic(res.image, res.maps, titles, colormap=cfg.infer.colormap, alpha=cfg.infer.alpha,
                       tile=cfg.infer.tile, boxes=boxes, with_colorbar=cfg.infer.colorbar, order=order)
    viz.save_png(os.path.join(outdir, f"{stem}_cam.png"), sheet)
    with open(os.path.join(outdir, f"{stem}.json"), "w", encoding="utf-8") as fh:
        json.dump(record_of(cfg, res), fh, indent=1)
    if cfg.infer.save_npz:
        np.savez_compressed(os.path.join(outdir, f"{stem}_maps.npz"), maps=res.maps.astype(np.float16),
                            probs=res.probs.astype(np.float32), labels=np.array(labels))


def run(cfg: Config) -> dict:
    """Explain every input image; returns a summary dict (counts and output folder)."""
    require_weights(cfg)
    items = resolve_inputs(cfg)
    explainer = explainer_from_config(cfg, load_model(cfg))
    outdir = os.path.join(cfg.output_dir, cfg.infer.subdir)
    os.makedirs(outdir, exist_ok=True)
    save_config(cfg, os.path.join(outdir, "config.yaml"))
    done, bad, used = 0, [], set()
    for res in explain_images(cfg, explainer, items, on_bad=bad.append):
        write_outputs(cfg, res, outdir, _unique_stem(res.item.path, used))
        done += 1
    summary = {"images": done, "skipped": len(bad), "bad_files": bad[:50], "output_dir": os.path.abspath(outdir),
               "engine": explainer.engine}
    with open(os.path.join(outdir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    logger.info("wrote %d mosaics and JSON records to %s (%d skipped)", done, summary["output_dir"], len(bad))
    return summary


__all__ = ["Item", "Explained", "resolve_inputs", "load_model", "explainer_from_config", "explain_images",
           "record_of", "write_outputs", "run"]
