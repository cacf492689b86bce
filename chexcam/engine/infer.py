"""Per-image CAM inference: mosaics, JSON records and boxes in the original image's pixels.

A streaming pipeline whose speed is set by the model (:mod:`chexcam.engine.pipeline`): worker processes
decode and preprocess ``infer.batch_size`` images ahead of the :class:`chexcam.Explainer` (one, built once
for the run), the parent runs the model, and workers turn each image's raw maps into boxes, a mosaic and
files behind it. At most a few batches are in flight, so memory does not grow with the number of images;
results come out in input order and are the serial path's (``infer.workers`` only changes the speed).

Each output gets the maps at the resolution it needs, straight from the raw maps through
:class:`~chexcam.data.transforms.Geometry` (never drawn at 1024 px and shrunk):

* boxes and peaks: maps in the original frame at :func:`chexcam.boxes.search_grid` (twice the network input
  on the longer side: 448 px for a 1024 px image at crop 224, the grid :func:`chexcam.boxes.boxes_for_maps`
  searched after shrinking full-size maps), scaled back to original pixels;
* mosaic tiles: maps at tile size (``infer.tile``);
* ``infer.save_npz`` (and :attr:`Explained.maps`): the full original size, computed only when asked for, as
  before.

Contact sheets are in :mod:`chexcam.engine.sheets`, the localization benchmark in
:mod:`chexcam.engine.localization`; both stream through :func:`explain_images`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from .. import viz
from ..boxes import boxes_for_maps, search_grid
from ..cam import LimeResult, method_options
from ..config import Config, save_config
from ..data import build_split
from ..data.io import list_images, read_image, read_list
from ..data.transforms import Geometry, TenCrop, crops_to_original, eval_transform
from ..errors import BadImageError, ChexcamError
from ..models import build_model, require_weights
from ..postprocess import normalize_maps
from ..serving import Explainer, cpu_count
from ..utils import atomic_path, seed_everything, set_device
from ..viewer import write_viewer
from .pipeline import Shelf, Stages, Stored, dist_env, fork_is_safe, gather, init_dist, shard, steady_rate, workers_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One input: its path and, for a dataset split, its 0/1 target ``[K]``."""

    path: str
    target: Optional[np.ndarray] = None


class Explained:
    """One image explained, everything in the original image's pixel coordinates.

    ``probs [K]``; ``boxes[k]`` ``[n, 4]`` (x1, y1, x2, y2) with ``scores[k]``; ``peaks[k]`` the ``(x, y)`` of
    map ``k``'s maximum; ``size`` the original ``(H, W)``. ``maps [K, H, W]`` (normalized per
    ``cam.normalize``, NaN where no crop saw the image) is computed from the raw maps on first use and kept;
    :meth:`maps_at` gives them at another size without making the full-size ones. LIME adds ``segments``
    (its superpixels at network input, in the frame of ``geos[0]``; :meth:`segments_at` maps them back) and
    ``keep[k]``, class ``k``'s top ``lime.top`` positive superpixels (strongest first).
    """

    def __init__(self, item: Item, image: Optional[np.ndarray], probs: np.ndarray, maps: Optional[np.ndarray] = None,
                 boxes: Sequence[np.ndarray] = (), scores: Sequence[np.ndarray] = (),
                 peaks: Sequence[Tuple[float, float]] = (), *, raw: Optional[np.ndarray] = None,
                 geos: Optional[Sequence[Geometry]] = None, interp: str = "linear", normalize: str = "minmax",
                 size: Optional[Tuple[int, int]] = None, tile_image: Optional[np.ndarray] = None,
                 segments: Optional[np.ndarray] = None, keep: Optional[Sequence[np.ndarray]] = None):
        self.item, self.image, self.probs = item, image, probs
        self.segments, self.keep = segments, None if keep is None else list(keep)
        self.boxes, self.scores, self.peaks = list(boxes), list(scores), list(peaks)
        self.raw, self.geos, self.interp, self.normalize = raw, geos, interp, normalize
        self.tile_image = tile_image  # the image already shrunk to mosaic tile size (workers send this, not the image)
        if size is None:
            size = tuple(image.shape[:2]) if image is not None else tuple(maps.shape[-2:])
        self.size = (int(size[0]), int(size[1]))
        self._maps = maps

    @property
    def maps(self) -> np.ndarray:
        if self._maps is None:
            self._maps = self.maps_at(*self.size)
        return self._maps

    def maps_at(self, h: int, w: int) -> np.ndarray:
        """``[K, h, w]``: the maps in the original frame resized to ``h x w``, normalized at that size."""
        if self.raw is None:  # built from saved full-size maps
            return np.stack([viz.resize_map(m, (w, h)) for m in self.maps])
        return frame_maps(self.raw, self.geos, h, w, self.interp, self.normalize)

    def segments_at(self, h: int, w: int) -> Optional[np.ndarray]:
        """LIME's superpixels in the original frame resized to ``h x w`` (nearest neighbour, -1 outside the
        crop), or ``None`` for the other methods."""
        return None if self.segments is None else self.geos[0].resized(h, w).labels_to_original(self.segments)


def frame_maps(raw: np.ndarray, geos: Sequence[Geometry], h: int, w: int, interp: str, normalize: str) -> np.ndarray:
    """Raw maps of one image's crops ``[n, K, h', w']`` -> ``[K, h, w]`` in the original frame resized to
    ``h x w`` (ten crops averaged), normalized there. At the original size this is exactly the full-size map."""
    full = crops_to_original(raw, [g.resized(h, w) for g in geos], interp)
    return normalize_maps(full, normalize, inplace=True)


def boxes_from_raw(cfg: Config, raw: np.ndarray, geos: Sequence[Geometry], size: Tuple[int, int], interp: str
                   ) -> Tuple[List[np.ndarray], List[np.ndarray], List[Tuple[float, float]]]:
    """Boxes, scores and peaks of every class in original pixels, searched on the grid of
    :func:`chexcam.boxes.search_grid` with the maps made there directly (not at full size and shrunk)."""
    h, w = size
    bh, bw = search_grid(size, cfg.data.crop)
    m = frame_maps(raw, geos, bh, bw, interp, cfg.cam.normalize)
    g = geos[-1].resized(bh, bw)
    boxes, scores, peaks = boxes_for_maps(m, cfg.localization, cfg.data.crop, g.sx, g.sy)
    fx, fy = w / bw, h / bh
    if (bh, bw) != (h, w):
        boxes = [b * np.array([fx, fy, fx, fy]) for b in boxes]
        peaks = [(px * fx, py * fy) for px, py in peaks]
    return boxes, scores, peaks


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
    files = list_images(spec)
    if os.path.isdir(spec) or any(ch in spec for ch in "*?["):  # never the run's own outputs, as X-rays
        own = os.path.join(cfg.output_dir, cfg.infer.subdir)  # where this tool writes its mosaics and viewer
        out = os.path.join(os.path.realpath(own), "")
        kept = [p for p in files if not os.path.realpath(p).startswith(out)]
        if len(kept) < len(files):
            logger.info("infer.input=%s: %d files under %s left out (this tool's own outputs)", spec,
                        len(files) - len(kept), own)
            if not kept:
                raise ChexcamError(f"infer.input={spec} matched only files under {own} (this tool's own outputs)")
        files = kept
    return [Item(p) for p in files]


# ---------------------------------------------------------------------------------------------
# the model and its Explainer


def load_model(cfg: Config):
    """Device, seed, the weights guard and the model, as every inference tool starts."""
    require_weights(cfg)
    set_device(cfg.device)
    seed_everything(cfg.seed)
    return build_model(cfg)


def lime_config(cfg: Config, overrides: Optional[dict] = None) -> dict:
    """LIME's options (:data:`chexcam.cam.lime.DEFAULTS`) from the ``lime`` section, then ``overrides``
    (``compare_methods.py --lime``), with the input normalization of ``data.mean``/``data.std`` (superpixels
    are cut from the RGB image). ``lime.top`` is a drawing setting, not LIME's."""
    section = {k: v for k, v in dataclasses.asdict(cfg.lime).items() if k != "top"}
    return {**section, "mean": tuple(cfg.data.mean), "std": tuple(cfg.data.std), **(overrides or {})}


def method_config(cfg: Config, method: str) -> dict:
    """The keyword options of ``method`` from the config: LIME's from the ``lime`` section; for every CAM-family
    method ``cam.aug_smooth``, ``cam.eigen_smooth`` and ``cam.fusion``, plus its own ``methods.<method>``
    section where it has one (Score-CAM's ``batch_size``, SS-CAM's noise, IS-CAM's steps, ...)."""
    if method == "lime":
        return lime_config(cfg)
    allowed = method_options(method)  # an unknown method is one line listing the registered ones
    opts = {"aug_smooth": cfg.cam.aug_smooth, "eigen_smooth": cfg.cam.eigen_smooth, "fusion": cfg.cam.fusion}
    section = getattr(cfg.methods, method, None)
    if section is not None:
        opts.update(dataclasses.asdict(section))
    return {k: v for k, v in opts.items() if k in allowed}


def cam_layer_of(cfg: Config):
    """``cam.layers`` (fused) if set, else ``cam.layer`` (``None``: the model's own ``cam_layer``)."""
    return list(cfg.cam.layers) if cfg.cam.layers else cfg.cam.layer


def explainer_from_config(cfg: Config, model, method: Optional[str] = None) -> Explainer:
    """The run's :class:`chexcam.Explainer`: ``cam.method``/``cam.layer`` (or ``method`` with the model's own
    layer) on ``infer.engine``, with the ``export`` section's predictor settings (threads, oneDNN, precision,
    TensorRT). Under ``paddle.distributed.launch`` on CPU, ``export.cpu_threads: 0`` shares the CPUs
    between the ranks."""
    device = "gpu" if cfg.device == "gpu" else None
    threads = cfg.export.cpu_threads
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    if not threads and world > 1 and device is None:
        threads = max(1, cpu_count() // world)
    layer = cam_layer_of(cfg) if method is None else None
    method = method or cfg.cam.method
    options = method_config(cfg, method)
    ex = Explainer(model, method=method, engine=cfg.infer.engine, precision=cfg.export.precision,
                   layer=layer, device=device, threads=threads,
                   mkldnn=cfg.export.mkldnn, tensorrt=cfg.export.tensorrt, **options)
    logger.info("explaining with %s on the %s engine (%s)", ex.method, ex.engine, ex.precision)
    return ex


# ---------------------------------------------------------------------------------------------
# the stages: load (workers) -> explain (this process) -> finish (workers)


@dataclass(frozen=True)
class _Context:
    """What the workers need, inherited when they are forked."""

    cfg: Config
    outdir: Optional[str] = None  # where run() writes; None: explain_images() (boxes only)
    keep_image: bool = False  # send the decoded image back (explain_images' callers show it)


@dataclass
class _Loaded:
    item: Item
    stem: Optional[str]
    slot: Optional[int]  # where the arrays are (Stages' shared arena)
    x: Stored  # [n_crops, 3, crop, crop]
    geos: List[Geometry]
    size: Tuple[int, int]
    tile_image: Optional[Stored]
    image: Optional[Stored]


@dataclass
class _Bad:
    item: Item
    reason: str
    slot: Optional[int] = None


@dataclass
class _Job:
    item: Item
    stem: Optional[str]
    slot: Optional[int]
    probs: np.ndarray
    raw: np.ndarray
    geos: List[Geometry]
    size: Tuple[int, int]
    tile_image: Optional[Stored]
    image: Optional[np.ndarray] = None  # explain_images only; stays in the parent
    segments: Optional[np.ndarray] = None  # LIME: int32 [crop, crop] superpixels
    keep: Optional[List[np.ndarray]] = None  # LIME: per class, its top lime.top positive superpixels


def _tile_size(size: Tuple[int, int], tile: int) -> Tuple[int, int]:
    """``(h, w)`` of the image in a mosaic tile (as :func:`chexcam.viz.mosaic` shrinks it)."""
    h, w = size
    s = tile / max(h, w)
    return max(1, int(round(h * s))), max(1, int(round(w * s)))


def _slot_bytes(cfg: Config, outdir: Optional[str]) -> int:
    """Bytes a :func:`_load` leaves on its shelf: the crops, and the image at tile size for a mosaic."""
    crops = (10 if cfg.infer.ten_crop else 1) * 3 * cfg.data.crop * cfg.data.crop * 4
    tile = cfg.infer.tile * cfg.infer.tile * 3 if outdir is not None and cfg.infer.mosaic else 0
    return crops + tile + 256


def _load(ctx: _Context, job: Tuple[Optional[str], Item, Optional[int]], shelf: Shelf):
    """Decode and preprocess one image (a worker's first task); a bad file becomes a :class:`_Bad`."""
    stem, item, slot = job
    cfg = ctx.cfg
    try:
        img = read_image(item.path, max_pixels=cfg.data.max_pixels)
        if cfg.infer.ten_crop:
            x, geos = TenCrop.from_config(cfg).crops_and_geometry(img)
        else:
            x, g = eval_transform(cfg)(img)
            x, geos = x[None], [g]
    except BadImageError as exc:  # the resize step's refusal does not know the file: name it
        msg = str(exc)
        return _Bad(item, msg if item.path in msg else f"{item.path}: {msg}", slot)
    size = (int(img.shape[0]), int(img.shape[1]))
    tile = None
    if ctx.outdir is not None and cfg.infer.mosaic:
        th, tw = _tile_size(size, cfg.infer.tile)
        tile = shelf.put(cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA))
    image = Stored(array=img) if ctx.keep_image else None  # variable size: it travels pickled
    return _Loaded(item, stem, slot, shelf.put(x), geos, size, tile, image)


def _finish(ctx: _Context, job: _Job, shelf: Shelf):
    """Boxes of one explained image and, in a run, its files (a worker's second task)."""
    cfg = ctx.cfg
    interp = "linear" if cfg.cam.upsample else "nearest"
    boxes, scores, peaks = boxes_from_raw(cfg, job.raw, job.geos, job.size, interp)
    if ctx.outdir is None:
        return boxes, scores, peaks
    tile = None if job.tile_image is None else shelf.get(job.tile_image)
    res = Explained(job.item, None, job.probs, None, boxes, scores, peaks, raw=job.raw, geos=job.geos,
                    interp=interp, normalize=cfg.cam.normalize, size=job.size, tile_image=tile,
                    segments=job.segments, keep=job.keep)
    write_outputs(cfg, res, ctx.outdir, job.stem)
    return job.stem


def _batches(cfg: Config, explainer, loaded: Iterable, stages: Stages,
             on_bad: Callable[[_Bad], None]) -> Iterator[_Job]:
    """Group decoded images into batches of ``infer.batch_size`` good ones, explain each, split per image."""
    size, per = cfg.infer.batch_size, 10 if cfg.infer.ten_crop else 1
    batch: List[_Loaded] = []

    def run(batch: List[_Loaded]) -> Iterator[_Job]:
        xs = [stages.shelf(b.slot).get(b.x) for b in batch]
        x = np.concatenate(xs) if len(xs) > 1 else np.array(xs[0])  # copies out of the slots
        result = explainer(x, normalize=False, upsample=False, relu=cfg.cam.relu)
        probs, raw = result
        lime = isinstance(result, LimeResult)  # one view per image (config.validate refuses ten crops)
        for j, b in enumerate(batch):
            p = probs[j * per:(j + 1) * per].mean(axis=0)
            seg = result.segments[j].astype(np.int32) if lime else None
            keep = [result.top_superpixels(j, k, cfg.lime.top) for k in range(len(p))] if lime else None
            yield _Job(b.item, b.stem, b.slot, p, np.ascontiguousarray(raw[j * per:(j + 1) * per]), b.geos, b.size,
                       b.tile_image, None if b.image is None else b.image.array, seg, keep)

    for r in loaded:
        if isinstance(r, _Bad):
            on_bad(r)
            continue
        batch.append(r)
        if len(batch) >= size:
            yield from run(batch)
            batch = []
    if batch:
        yield from run(batch)


def _stream(cfg: Config, explainer, jobs: Sequence[Tuple[Optional[str], Item]], stages: Stages,
            on_bad: Callable[[_Bad], None], bar) -> Iterator[Tuple[_Job, object]]:
    """``(job, what _finish returned)`` for every good image, in input order. Each image has a slot of the
    shared arena from its decoding to its files (its crops and tile-size image are there)."""
    n = stages.processes

    def to_load() -> Iterator[Tuple[tuple, Optional[int]]]:
        for stem, item in jobs:
            slot = stages.new_slot()
            yield (stem, item, slot), slot

    def counted_bad(b: _Bad) -> None:
        stages.free_slot(b.slot)
        on_bad(b)
        bar.update(1)

    loaded = stages.map(_load, to_load(), ahead=2 * cfg.infer.batch_size + n, cancellable=True)
    kept: collections.deque = collections.deque()

    def to_finish(explained: Iterable[_Job]) -> Iterator[Tuple[_Job, Optional[int]]]:
        for job in explained:
            kept.append(job)
            # the full image stays here (explain_images returns it); workers need the raw maps and the tile
            yield (job if job.image is None or not n else dataclasses.replace(job, image=None)), job.slot

    for out in stages.map(_finish, to_finish(_batches(cfg, explainer, loaded, stages, counted_bad)),
                          ahead=cfg.infer.batch_size + 2 * n, finish_on_interrupt=True):
        job = kept.popleft()
        stages.free_slot(job.slot)
        bar.update(1)
        yield job, out


def _stages(cfg: Config, processes: int, ctx: _Context) -> Stages:
    """The worker pool of a run, with a slot per image that can be between decoding and written."""
    bs = cfg.infer.batch_size
    slots = (2 * bs + processes) + 2 * bs + (bs + 2 * processes) + 2  # decoding + batching + finishing
    return Stages(processes, ctx, slot_bytes=_slot_bytes(cfg, ctx.outdir), slots=slots)


def _bad_policy(cfg: Config, on_bad: Optional[Callable[[str], None]], follow_config: bool) -> Callable[[_Bad], None]:
    """What a bad file does: under ``data.on_bad_image: error`` (when ``follow_config``) it stops the run with
    one line naming it; otherwise it is logged and passed to ``on_bad``."""
    def handle(b: _Bad) -> None:
        if follow_config and cfg.data.on_bad_image == "error":
            raise BadImageError(b.reason)
        logger.warning("skipped: %s", b.reason)
        if on_bad is not None:
            on_bad(b.reason)
    return handle


def explain_images(cfg: Config, explainer, items: Sequence[Item], on_bad: Optional[Callable[[str], None]] = None,
                   progress: bool = True, workers: Optional[int] = None) -> Iterator[Explained]:
    """Stream :class:`Explained` results over ``items`` in order, ``infer.batch_size`` images per forward pass.

    Raw maps (ReLU per ``cam.relu``) are boxed in the original frame (:func:`boxes_from_raw`); the full-size
    maps are made when ``.maps`` is read. A file that cannot be decoded follows ``data.on_bad_image``
    (``error`` raises a :class:`BadImageError` naming it, ``skip`` logs it and goes on), unless ``on_bad`` is
    given: then it is logged, passed to ``on_bad`` and skipped. ``workers``: processes decoding ahead and boxing
    behind the model (default ``infer.workers``; none for a single batch; 0 = all in this process).
    """
    items = list(items)
    if workers is None:  # worth a pool for more than a batch, and only where forking is safe (quietly)
        workers = workers_for(cfg.infer.workers) if len(items) > cfg.infer.batch_size and fork_is_safe() else 0
    interp = "linear" if cfg.cam.upsample else "nearest"
    bar = tqdm(total=len(items), desc="infer", unit="img", disable=not progress)
    try:
        with _stages(cfg, workers, _Context(cfg, keep_image=True)) as stages:
            for job, (boxes, scores, peaks) in _stream(cfg, explainer, [(None, it) for it in items], stages,
                                                       _bad_policy(cfg, on_bad, on_bad is None), bar):
                yield Explained(job.item, job.image, job.probs, None, boxes, scores, peaks, raw=job.raw,
                                geos=job.geos, interp=interp, normalize=cfg.cam.normalize, size=job.size,
                                segments=job.segments, keep=job.keep)
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
        "size": [int(res.size[1]), int(res.size[0])],
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
            "peak": [round(float(v), 1) for v in res.peaks[k]],
        }
        if res.keep is not None:  # LIME: the superpixels outlined on the class's tile (labels of segments)
            rec["classes"][name]["top_superpixels"] = [int(v) for v in res.keep[k]]
    if res.segments is not None:
        rec["superpixels"] = int(res.segments.max()) + 1
    return rec


def png_params(level: int) -> List[int]:
    """OpenCV PNG settings for ``infer.png_compression``: 0 stores the pixels unfiltered (fastest, about 3x
    larger), 1 zlib level 1 with run-length matching and the UP filter (measured on 3x5 chest mosaics: 35 ms
    and 1.18 MB against 43 ms and 1.32 MB for OpenCV's own level-1 setting, SUB filter), 2-9 zlib levels with
    the SUB filter (smaller, slower)."""
    if level <= 0:
        return [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    if level == 1:
        return [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    return [cv2.IMWRITE_PNG_COMPRESSION, int(level), cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]


def _write_png(path: str, rgb: np.ndarray, level: int) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), png_params(level))
    if not ok:
        raise ChexcamError(f"cannot encode {path}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buf.tobytes())


def mosaic_of(cfg: Config, res: Explained) -> np.ndarray:
    """The 3x5 mosaic of one image, drawn at tile size: the image shrunk once (as :func:`chexcam.viz.mosaic`
    does), the maps made at that size, the boxes scaled to it."""
    labels = list(cfg.data.labels)
    titles = [f"{name}: {100 * p:.1f}%" for name, p in zip(labels, res.probs)]
    order = list(np.argsort(-res.probs, kind="stable")) if cfg.infer.sort else None
    th, tw = _tile_size(res.size, cfg.infer.tile)
    base = res.tile_image
    if base is None:
        base = cv2.resize(res.image, (tw, th), interpolation=cv2.INTER_AREA)
    s = cfg.infer.tile / max(res.size)
    draw = cfg.infer.draw_boxes
    boxes = None
    if draw != "none":
        boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) * s if draw == "all" or p >= cfg.infer.threshold
                 else [] for b, p in zip(res.boxes, res.probs)]
    seg = res.segments_at(th, tw)  # LIME: each class tile outlines its top superpixels
    return viz.mosaic(base, res.maps_at(th, tw), titles, colormap=cfg.infer.colormap, alpha=cfg.infer.alpha,
                      tile=cfg.infer.tile, boxes=boxes, with_colorbar=cfg.infer.colorbar, order=order,
                      segments=seg, keep=None if seg is None else res.keep)


def write_outputs(cfg: Config, res: Explained, outdir: str, stem: str) -> None:
    """JSON record, mosaic PNG (``infer.mosaic``) and maps at the original size (``infer.save_npz``) of one
    image, each written under a temporary name and renamed (an interrupted run never leaves half a file)."""
    labels = list(cfg.data.labels)
    with atomic_path(os.path.join(outdir, f"{stem}.json")) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record_of(cfg, res), fh, indent=1)
    if cfg.infer.mosaic:
        _write_png(os.path.join(outdir, f"{stem}_cam.png"), mosaic_of(cfg, res), cfg.infer.png_compression)
    if cfg.infer.save_npz:
        with atomic_path(os.path.join(outdir, f"{stem}_maps.npz")) as tmp, open(tmp, "wb") as fh:
            extra = {} if res.segments is None else {"segments": res.segments_at(*res.size)}
            np.savez_compressed(fh, maps=res.maps.astype(np.float16), probs=res.probs.astype(np.float32),
                                labels=np.array(labels), **extra)


def run(cfg: Config, workers: Optional[int] = None) -> dict:
    """Explain every input image; returns a summary dict (counts, skipped files, speed, output folder).

    ``workers``: processes beside the model (default ``infer.workers``; 0: everything in this process, the
    serial path, whose outputs are the same). Under ``paddle.distributed.launch`` each rank explains every
    ``world``-th input and writes its own files into the same folder (names are given before the split, so
    they do not depend on the number of ranks); rank 0 writes ``summary.json`` for all.

    Raises:
        BadImageError: a bad file under ``data.on_bad_image: error`` (its name in the message).
        ChexcamError: no image could be explained.
    """
    if not cfg.infer.input and not cfg.model.weights and not cfg.model.allow_random:  # both at once, not in turn
        raise ChexcamError("model.weights and infer.input are not set: pass -o model.weights=PATH (or -o "
                           "model.allow_random=true for random weights) and -o infer.input=IMAGE|FOLDER|GLOB|"
                           "LIST.csv|split:test")
    require_weights(cfg)
    rank, world = dist_env()  # the process group is joined after the workers are forked
    items = resolve_inputs(cfg)
    used: set = set()
    jobs = shard([(_unique_stem(it.path, used), it) for it in items], rank, world)
    outdir = os.path.join(cfg.output_dir, cfg.infer.subdir)
    os.makedirs(outdir, exist_ok=True)
    if rank == 0:
        save_config(cfg, os.path.join(outdir, "config.yaml"))
    processes = workers_for(cfg.infer.workers) if workers is None else workers
    if world > 1 and workers is None and not cfg.infer.workers:
        processes = max(1, processes // world)
    done, bad, times = 0, [], []
    interrupted, engine, t0, bar = False, None, time.time(), None
    try:
        # the workers are forked first, while this process has no thread but paddle's idle ones (no progress
        # bar, process group or predictor yet): see chexcam.engine.pipeline.fork_is_safe
        with _stages(cfg, processes, _Context(cfg, outdir=outdir)) as stages:
            processes = stages.processes  # 0 when forking was not safe here
            init_dist()
            bar = tqdm(total=len(jobs), desc="infer", unit="img", disable=rank != 0)
            explainer = explainer_from_config(cfg, load_model(cfg))
            engine, t0 = explainer.engine, time.time()
            for _ in _stream(cfg, explainer, jobs, stages, _bad_policy(cfg, bad.append, True), bar):
                done += 1
                times.append(time.time())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    seconds = time.time() - t0
    steady = steady_rate(times, cfg.infer.batch_size)
    mine = {"images": done, "bad": bad, "seconds": seconds, "interrupted": interrupted, "steady": steady}
    parts = [mine] if interrupted else gather(mine, world)  # an interrupted rank does not wait for the others
    total, skipped = sum(p["images"] for p in parts), [r for p in parts for r in p["bad"]]
    slowest = max(p["seconds"] for p in parts)
    rates = [p["steady"] for p in parts if p["steady"]]
    summary = {"images": total, "skipped": len(skipped), "bad_files": skipped,
               "output_dir": os.path.abspath(outdir), "engine": engine, "workers": processes, "ranks": world,
               "seconds": round(slowest, 3), "images_per_s": round(sum(rates), 3) if rates else None,
               "interrupted": any(p["interrupted"] for p in parts)}
    # the HTML viewer of the folder (index.html), with the full outputs; JSON-only runs stay lean
    summary["viewer"] = write_viewer(outdir) if rank == 0 and total and not interrupted and cfg.infer.mosaic else None
    if rank == 0:
        with atomic_path(os.path.join(outdir, "summary.json")) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1)
    if interrupted:
        logger.warning("interrupted: %d images written to %s", done, summary["output_dir"])
        raise KeyboardInterrupt
    if total == 0:
        raise ChexcamError(f"no image explained: all {len(items)} inputs were bad"
                           + (f" (first: {skipped[0]})" if skipped else ""))
    rate = summary["images_per_s"]
    logger.info("wrote %d JSON records%s to %s (%d skipped) in %.1f s (%s)", total,
                " and mosaics" if cfg.infer.mosaic else "", summary["output_dir"], len(skipped), slowest,
                f"{rate:.2f} images/s in steady state" if rate else "too few batches for a steady-state rate")
    return summary


__all__ = ["Item", "Explained", "resolve_inputs", "load_model", "explainer_from_config", "explain_images",
           "record_of", "write_outputs", "mosaic_of", "png_params", "frame_maps", "boxes_from_raw", "run"]
