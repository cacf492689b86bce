"""CAM inference over image files: mosaics, JSON records and boxes; contact sheets; the localization benchmark.

Everything streams: inputs are listed as paths (never decoded up front), decoded ``infer.batch_size`` at a
time, explained by one swappable call ``x -> (probs, maps)`` (:func:`make_explainer`), mapped back to the
original image's pixels, written, and dropped. Memory does not grow with the number of images.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from .. import build_model, explain, viz
from ..boxes import boxes_from_map, peak_point
from ..cam.base import normalize_maps_np, resolve_classes
from ..config import Config, save_config
from ..data.io import read_image
from ..data.transforms import Geometry, TenCrop, eval_transform
from ..errors import BadImageError, ChexcamError, ConfigError, DataError
from ..utils import seed_everything, set_device

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")

Explainer = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]


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


def list_inputs(spec: str) -> List[str]:
    """One file, a folder (its images, sorted) or a glob pattern -> list of paths."""
    if os.path.isdir(spec):
        files = [os.path.join(spec, f) for f in sorted(os.listdir(spec)) if f.lower().endswith(IMAGE_EXTS)]
    elif any(ch in spec for ch in "*?["):
        files = sorted(f for f in glob.glob(spec, recursive=True) if os.path.isfile(f))
    elif os.path.isfile(spec):
        files = [spec]
    else:
        raise ChexcamError(f"infer.input not found: {spec} (expected an image, a folder, a glob, a .csv/.txt "
                           "list or split:train|val|test)")
    if not files:
        raise ChexcamError(f"infer.input {spec} matched no images ({', '.join(IMAGE_EXTS)})")
    return files


def read_list(path: str, column: str = "path") -> List[str]:
    """Paths from a CSV (column ``column``, else ``path``, ``Image Index`` or the first) or a text file
    (first field per line); relative paths are relative to the list's folder."""
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            if path.lower().endswith(".csv"):
                reader = csv.reader(fh)
                header = [h.strip() for h in next(reader, [])]
                col = next((header.index(c) for c in (column, "path", "Image Index") if c in header), 0)
                names = [row[col].strip() for row in reader if len(row) > col and row[col].strip()]
            else:
                names = [line.split()[0] for line in fh if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise ChexcamError(f"cannot read infer.input list {path}: {exc.strerror}") from None
    if not names:
        raise ChexcamError(f"infer.input list {path} names no images")
    return [n if os.path.isabs(n) else os.path.join(base, n) for n in names]


def resolve_inputs(cfg: Config) -> List[Item]:
    """``infer.input`` -> items: ``split:NAME`` of the configured dataset, a .csv/.txt list, or files."""
    spec = cfg.infer.input
    if not spec:
        raise ChexcamError("infer.input is not set: pass -o infer.input=IMAGE|FOLDER|GLOB|LIST.csv|split:test")
    if spec.startswith("split:"):
        from ..data import build_split

        samples = build_split(cfg, spec.split(":", 1)[1])
        if not samples:
            raise ChexcamError(f"infer.input={spec}: the split is empty")
        return [Item(s.path, np.asarray(s.target, dtype=np.float32)) for s in samples]
    if os.path.isfile(spec) and spec.lower().endswith((".csv", ".txt")):
        return [Item(p) for p in read_list(spec, cfg.data.path_column)]
    return [Item(p) for p in list_inputs(spec)]


def check_weights(cfg: Config) -> None:
    if not cfg.model.weights and not cfg.model.allow_random:
        raise ChexcamError(
            "no model.weights given: convert the public CheXNet checkpoint as pretrained/README.md shows and "
            "pass -o model.weights=PATH, or -o model.allow_random=true for a demo with random weights"
        )


def check_config(cfg: Config) -> None:
    """Range checks of the inference and localization keys (one line naming the key)."""
    i, loc = cfg.infer, cfg.localization
    checks = [
        ("infer.alpha", i.alpha, 0.0 <= i.alpha <= 1.0, "in [0, 1]"),
        ("infer.threshold", i.threshold, 0.0 <= i.threshold <= 1.0, "in [0, 1]"),
        ("infer.tile", i.tile, i.tile >= 32, ">= 32"),
        ("infer.colormap", i.colormap, i.colormap in viz.COLORMAPS, "one of " + ", ".join(sorted(viz.COLORMAPS))),
        ("localization.threshold", loc.threshold, 0.0 < loc.threshold <= 1.0, "in (0, 1]"),
        ("localization.max_boxes", loc.max_boxes, loc.max_boxes >= 0, ">= 0"),
        ("localization.peak_size", loc.peak_size, 0.0 < loc.peak_size <= 1.0, "in (0, 1]"),
        ("localization.min_distance", loc.min_distance, 0.0 <= loc.min_distance <= 1.0, "in [0, 1]"),
        ("localization.threshold_rel", loc.threshold_rel, 0.0 <= loc.threshold_rel <= 1.0, "in [0, 1]"),
    ]
    for key, value, ok, want in checks:
        if not ok:
            src = cfg.source or "the config"
            raise ConfigError(f"key '{key}' in {src} must be {want}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# the swappable per-batch call and the geometry around it


def make_explainer(cfg: Config, model) -> Explainer:
    """The per-batch call ``x [N, 3, h, w] float32 -> (probs [N, K], maps [N, K, h', w'])``.

    Maps are raw (``relu`` per ``cam.relu``, not normalized; at the input size unless ``cam.upsample`` is
    false, in which case the engine enlarges the feature cells as blocks): the engine maps them back to the original
    image, averages ten crops when asked, and normalizes there (again: idempotent for maps that come
    normalized). ``infer.engine: paddle_inference`` delegates to
    ``chexcam.inference.make_predictor_explainer(cfg, model)`` (an exported Paddle Inference predictor).
    """
    if cfg.infer.engine == "paddle_inference":
        try:
            from ..inference import make_predictor_explainer
        except ImportError:  # a paddle build without paddle.inference
            raise ChexcamError("infer.engine=paddle_inference needs chexcam.inference, which this installation "
                               "lacks; use -o infer.engine=dynamic") from None
        return make_predictor_explainer(cfg, model)
    from .. import cam as _cam  # noqa: F401  (registers the CAM methods)
    from ..registry import CAM_METHODS

    CAM_METHODS.get(cfg.cam.method)  # an unknown method fails here, before any image is read
    method, layer, relu, upsample = cfg.cam.method, cfg.cam.layer, cfg.cam.relu, cfg.cam.upsample

    def run(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return explain(model, x, method=method, normalize=False, upsample=upsample, relu=relu, layer=layer)

    return run


def ten_crop_inputs(img: np.ndarray, cfg: Config) -> Tuple[np.ndarray, List[Geometry]]:
    """The ten crops of :class:`chexcam.data.transforms.TenCrop` (the ones evaluation averages) and the
    geometry of the first five; crop ``i + 5`` is the mirror of crop ``i``."""
    return TenCrop.from_config(cfg).crops_and_geometry(img)


def _to_input_size(maps: np.ndarray, size: int, smooth: bool) -> np.ndarray:
    """``[K, h, w]`` maps -> ``[K, size, size]`` (bilinear, or nearest to show the true map cells)."""
    if maps.shape[-2:] == (size, size):
        return maps
    interp = cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST
    return np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=interp) for m in maps])


def map_boxes(cfg: Config, maps: np.ndarray, geo: Geometry):
    """Boxes, scores and peak points of every map, in the maps' (original) frame.

    Maps larger than twice the network input are searched at that size (boxes scaled back): a map holds
    no detail finer than its feature cells (32 input px for DenseNet121), and labelling 1024x1024 maps
    of 14 classes would dominate the run time.
    """
    loc, crop = cfg.localization, cfg.data.crop
    h, w = maps.shape[-2:]
    scale = min(1.0, 2.0 * crop / max(h, w))
    size = (loc.peak_size * crop / geo.sx * scale, loc.peak_size * crop / geo.sy * scale)
    dist = max(1, int(round(loc.min_distance * crop / (0.5 * (geo.sx + geo.sy)) * scale)))
    small = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    fx, fy = w / small[0], h / small[1]
    boxes, scores, peaks = [], [], []
    for m in maps:
        if scale < 1.0:
            m = viz.resize_map(m, small)
        b, s = boxes_from_map(m, loc.boxes, loc.max_boxes, loc.threshold, dist, loc.threshold_rel, size)
        boxes.append(b * np.array([fx, fy, fx, fy]))
        scores.append(s)
        px, py = peak_point(m)
        peaks.append((px * fx, py * fy))
    return boxes, scores, peaks


def _batches(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def explain_images(cfg: Config, model, items: Sequence[Item], explainer: Optional[Explainer] = None,
                   on_bad: Optional[Callable[[str], None]] = None, progress: bool = True) -> Iterator[Explained]:
    """Stream :class:`Explained` results over ``items``, ``infer.batch_size`` images per forward pass.

    A file that cannot be decoded is logged, passed to ``on_bad`` and skipped.
    """
    explainer = explainer or make_explainer(cfg, model)
    tf = eval_transform(cfg)
    ten = cfg.infer.ten_crop
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
                if ten:
                    x, g = ten_crop_inputs(img, cfg)
                else:
                    x, g = tf(img)
                    x, g = x[None], [g]
                good.append((item, img))
                xs.append(x)
                geos.append(g)
            if not good:
                continue
            probs, maps = explainer(np.concatenate(xs))
            per = 10 if ten else 1
            for j, (item, img) in enumerate(good):
                p = probs[j * per:(j + 1) * per].mean(axis=0)
                full = _back_to_original(maps[j * per:(j + 1) * per], geos[j], cfg)
                full = normalize_maps_np(full, cfg.cam.normalize, inplace=True)
                boxes, scores, peaks = map_boxes(cfg, full, geos[j][-1])
                yield Explained(item, img, p, full, boxes, scores, peaks)
                bar.update(1)
    finally:
        bar.close()


def to_original(geo: Geometry, maps: np.ndarray) -> np.ndarray:
    """``[K, out_h, out_w]`` maps -> ``[K, orig_h, orig_w]``, NaN exactly where no crop pixel lies.

    A pixel is covered when its centre falls inside the crop; sampling uses a one-pixel replicated rim so
    the crop's last row and column do not interpolate with the NaN outside (which
    ``Geometry.map_to_original`` alone would turn into a NaN seam along the crop's edge).
    """
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)), mode="edge")
    rim = dataclasses.replace(geo, x0=geo.x0 - 1, y0=geo.y0 - 1, out_h=geo.out_h + 2, out_w=geo.out_w + 2)
    full = rim.map_to_original(padded, fill=np.nan)
    u = (np.arange(geo.orig_w) + 0.5) * geo.sx - geo.x0
    v = (np.arange(geo.orig_h) + 0.5) * geo.sy - geo.y0
    outside = ~(((v >= 0) & (v < geo.out_h))[:, None] & ((u >= 0) & (u < geo.out_w))[None, :])
    if outside.any():
        full[:, outside] = np.nan
    return full


def _back_to_original(maps: np.ndarray, geos: List[Geometry], cfg: Config) -> np.ndarray:
    """One crop's maps, or ten crops' maps averaged where they overlap, in the original frame."""
    smooth = cfg.cam.upsample
    if len(geos) == 1:
        return to_original(geos[0], _to_input_size(maps[0], cfg.data.crop, smooth))
    total = count = None
    for i, m in enumerate(maps):
        m = _to_input_size(m, cfg.data.crop, smooth)
        if i >= 5:
            m = np.ascontiguousarray(m[..., ::-1])  # undo the mirror before placing the crop
        full = to_original(geos[i % 5], m)
        ok = np.isfinite(full)
        if total is None:
            total, count = np.zeros_like(full), np.zeros(full.shape, np.float32)
        total += np.where(ok, full, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


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


def _setup(cfg: Config):
    check_weights(cfg)
    check_config(cfg)
    set_device(cfg.device)
    seed_everything(cfg.seed)
    model = build_model(cfg)
    if not cfg.model.weights:
        logger.warning("model.allow_random=true: random weights, the maps and probabilities are meaningless")
    return model


def run(cfg: Config) -> dict:
    """Explain every input image; returns a summary dict (counts and output folder)."""
    check_weights(cfg)
    items = resolve_inputs(cfg)
    model = _setup(cfg)
    explainer = make_explainer(cfg, model)
    outdir = os.path.join(cfg.output_dir, cfg.infer.subdir)
    os.makedirs(outdir, exist_ok=True)
    save_config(cfg, os.path.join(outdir, "config.yaml"))
    done, bad, used = 0, [], set()
    for res in explain_images(cfg, model, items, explainer, on_bad=bad.append):
        write_outputs(cfg, res, outdir, _unique_stem(res.item.path, used))
        done += 1
    summary = {"images": done, "skipped": len(bad), "bad_files": bad[:50], "output_dir": os.path.abspath(outdir)}
    with open(os.path.join(outdir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    logger.info("wrote %d mosaics and JSON records to %s (%d skipped)", done, summary["output_dir"], len(bad))
    return summary


# ---------------------------------------------------------------------------------------------
# contact sheets (tools/render_mosaic.py)


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
        with open(os.path.join(folder, f), encoding="utf-8") as fh:
            rec = json.load(fh)
        if "classes" not in rec:
            continue
        if not os.path.isfile(npz):
            raise ChexcamError(f"{npz} not found: run infer_cam.py with -o infer.save_npz=true to render from outputs")
        if list(rec["classes"]) != labels:
            raise ChexcamError(f"{os.path.join(folder, f)} has classes {list(rec['classes'])}, the config {labels}")
        try:
            img = read_image(rec["image"])
        except BadImageError as exc:
            logger.warning("skipped: %s", exc)
            continue
        with np.load(npz) as z:
            maps = z["maps"].astype(np.float32)
        c = rec["classes"]
        target = np.array([rec["target"][n] for n in labels], np.float32) if "target" in rec else None
        yield Explained(Item(rec["image"], target), img, np.array([c[n]["probability"] for n in labels]), maps,
                        [np.array(c[n]["boxes"], dtype=np.float64).reshape(-1, 4) for n in labels],
                        [np.array(c[n]["box_scores"]) for n in labels], [tuple(c[n]["peak"]) for n in labels])


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
    check_config(cfg)
    idx = _class_indices(cfg, classes)
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
        model = _setup(cfg)
        results = explain_images(cfg, model, items)
    labels = list(cfg.data.labels)
    rows, titles = [], []
    for res in results:
        if not _truth_ok(res.item.target, idx[0], truth) and source:
            if res.item.target is None:
                raise ChexcamError(f"truth={truth} needs saved records of a split input (no 'target' in them)")
            continue
        row = [viz.fit_tile(res.image, tile)]
        for k in idx:
            row += viz.cell_tiles(res.image, res.maps[k], res.boxes[k], tile, cfg.infer.colormap, cfg.infer.alpha)
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


# ---------------------------------------------------------------------------------------------
# localization benchmark (tools/eval_localization.py)


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
        names = read_list(cfg.localization.train_list)
        return {os.path.basename(n) for n in names}, cfg.localization.train_list
    train_cfg, where = cfg, "this config"
    try:
        if cfg.model.weights:
            from ..config import config_from_dict
            from ..weights import checkpoint_config, read_checkpoint

            stored = checkpoint_config(read_checkpoint(cfg.model.weights))
            if stored:
                train_cfg, where = config_from_dict(stored, cfg.model.weights), f"the config in {cfg.model.weights}"
        from ..data import build_split

        names = {os.path.basename(s.path) for s in build_split(train_cfg, "train")}
        return names, f"the train split of {where}"
    except (ChexcamError, ImportError) as exc:
        return None, f"could not list the training split of {where}: {exc}"


def eval_localization(cfg: Config) -> dict:
    """Wang et al. 2017 Table 4 for the configured model and maps against ``BBox_List_2017.csv``.

    Returns ``{"report": text, "results": per-finding dict, "pointing": overall hit rate, "images": n,
    "train_overlap": n or None, "output_dir": folder}``; writes ``report.txt`` and ``results.json``.
    """
    from ..metrics.localization import BBOX_FINDINGS, LocalizationTally, read_bbox_csv

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
    model = _setup(cfg)
    tally = LocalizationTally(findings=findings)
    for res in explain_images(cfg, model, items):
        per = {}
        for finding, box in gt[os.path.basename(res.item.path)]:
            per.setdefault(finding, []).append(box)
        for finding, boxes in per.items():
            if finding in findings:
                k = labels.index(finding)
                tally.add(finding, boxes, res.boxes[k], res.peaks[k])
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
        json.dump(_no_nan({k: v for k, v in summary.items() if k != "report"}), fh, indent=1)
    return summary


def _no_nan(obj):
    """NaN (no boxes of a finding) -> null, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


__all__ = ["Item", "Explained", "resolve_inputs", "list_inputs", "make_explainer", "explain_images", "run",
           "render_sheet", "eval_localization", "ten_crop_inputs", "normalize_maps_np"]
