"""Deterministic preprocessing with a record of the geometry, so maps can go back to the original.

``EvalTransform`` resizes (shorter side to ``resize``), centre-crops ``crop`` and normalizes; the
returned :class:`Geometry` maps any point or map of the network input back to the original image's
pixel coordinates (the coordinates of NIH's ``BBox_List_2017.csv`` for a 1024x1024 image).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from ..config import DEFAULT_MAX_PIXELS
from ..errors import BadImageError
from ..postprocess import resize_maps

#: most pixels the resize step may make (as many as ``data.max_pixels`` lets an image have by default)
MAX_RESIZED_PIXELS = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Geometry:
    """Network-input pixel ``(u, v)`` -> original pixel ``((u + x0) / sx, (v + y0) / sy)``.

    ``orig_h, orig_w``: the original image size; ``sx, sy``: resize factors; ``x0, y0``: crop offset in
    the resized image; ``out_h, out_w``: the network input size. Coordinates are continuous pixel
    edges (a pixel ``i`` spans ``[i, i + 1)``).
    """

    orig_h: int
    orig_w: int
    sx: float
    sy: float
    x0: float
    y0: float
    out_h: int
    out_w: int

    def box_to_original(self, box: Sequence[float]) -> Tuple[float, float, float, float]:
        """``(x1, y1, x2, y2)`` in network-input pixels -> original pixels, clipped to the image."""
        x1, y1, x2, y2 = box
        ox1 = min(max((x1 + self.x0) / self.sx, 0.0), self.orig_w)
        ox2 = min(max((x2 + self.x0) / self.sx, 0.0), self.orig_w)
        oy1 = min(max((y1 + self.y0) / self.sy, 0.0), self.orig_h)
        oy2 = min(max((y2 + self.y0) / self.sy, 0.0), self.orig_h)
        return ox1, oy1, ox2, oy2

    def resized(self, h: int, w: int) -> "Geometry":
        """The same crop for the original image resized to ``h x w``: maps go straight to that size (a
        mosaic tile, a box search grid) instead of to the full image and down again."""
        if (h, w) == (self.orig_h, self.orig_w):
            return self
        return dataclasses.replace(self, orig_h=int(h), orig_w=int(w), sx=self.sx * self.orig_w / w,
                                   sy=self.sy * self.orig_h / h)

    def map_to_original(self, m: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """A ``[..., out_h, out_w]`` map -> ``[..., orig_h, orig_w]``; pixels outside the crop get ``fill``."""
        lead = m.shape[:-2]
        flat = m.reshape(-1, self.out_h, self.out_w).astype(np.float32)
        # affine from original pixel centres to input pixel centres
        mat = np.array([[self.sx, 0.0, 0.5 * self.sx - 0.5 - self.x0],
                        [0.0, self.sy, 0.5 * self.sy - 0.5 - self.y0]], dtype=np.float64)
        out = np.empty((flat.shape[0], self.orig_h, self.orig_w), dtype=np.float32)
        for i, plane in enumerate(flat):
            out[i] = cv2.warpAffine(plane, mat, (self.orig_w, self.orig_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))
        return out.reshape(*lead, self.orig_h, self.orig_w)


    def labels_to_original(self, labels: np.ndarray, fill: int = -1) -> np.ndarray:
        """An integer ``[out_h, out_w]`` label image (LIME's superpixels) -> ``int32 [orig_h, orig_w]`` by
        nearest neighbour: each original pixel takes the label of the input pixel its centre falls in
        (labels never blend), ``fill`` where its centre lies outside the crop."""
        labels = np.asarray(labels)
        if labels.shape != (self.out_h, self.out_w):
            raise ValueError(f"labels {list(labels.shape)} are not at the network input {[self.out_h, self.out_w]}")
        u = np.floor((np.arange(self.orig_w) + 0.5) * self.sx - self.x0).astype(np.int64)
        v = np.floor((np.arange(self.orig_h) + 0.5) * self.sy - self.y0).astype(np.int64)
        ok_u, ok_v = (u >= 0) & (u < self.out_w), (v >= 0) & (v < self.out_h)
        out = labels.astype(np.int32)[np.clip(v, 0, self.out_h - 1)[:, None], np.clip(u, 0, self.out_w - 1)[None, :]]
        out[~(ok_v[:, None] & ok_u[None, :])] = fill
        return out

    def maps_to_original(self, maps: np.ndarray, interp: str = "linear") -> np.ndarray:
        """``[K, h, w]`` maps of this crop (any resolution) -> ``[K, orig_h, orig_w]``, NaN exactly where no
        crop pixel lies.

        The maps are first resized to the network input (``interp``: ``linear``, or ``nearest`` to keep the
        feature cells visible). A pixel is covered when its centre falls inside the crop; sampling uses a
        one-pixel replicated rim so the crop's last row and column do not interpolate with the NaN outside
        (which :meth:`map_to_original` alone would turn into a NaN seam along the crop's edge).
        """
        maps = resize_maps(maps, (self.out_h, self.out_w), interp)
        padded = np.pad(maps, ((0, 0), (1, 1), (1, 1)), mode="edge")
        rim = dataclasses.replace(self, x0=self.x0 - 1, y0=self.y0 - 1, out_h=self.out_h + 2, out_w=self.out_w + 2)
        full = rim.map_to_original(padded, fill=np.nan)
        u = (np.arange(self.orig_w) + 0.5) * self.sx - self.x0
        v = (np.arange(self.orig_h) + 0.5) * self.sy - self.y0
        outside = ~(((v >= 0) & (v < self.out_h))[:, None] & ((u >= 0) & (u < self.out_w))[None, :])
        if outside.any():
            np.copyto(full, np.nan, where=outside)  # the same as full[:, outside] = nan, without fancy indexing
        return full


def resize_shorter(img: np.ndarray, size: int) -> Tuple[np.ndarray, float, float]:
    """Resize so the shorter side is ``size`` (area interpolation when shrinking); returns scales."""
    h, w = img.shape[:2]
    if h <= w:
        nh, nw = size, max(1, int(round(w * size / h)))
    else:
        nh, nw = max(1, int(round(h * size / w))), size
    if (nh, nw) == (h, w):
        return img, 1.0, 1.0
    interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
    return cv2.resize(img, (nw, nh), interpolation=interp), nw / w, nh / h


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> float32 CHW, ``(x / 255 - mean) / std``."""
    x = img.astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class EvalTransform:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, normalize; keep the geometry."""

    mode = "shorter"  #: the resize step (:func:`resize_for`)

    def __init__(self, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]):
        self.resize, self.crop, self.mean, self.std = int(resize), int(crop), tuple(mean), tuple(std)

    def geometry_and_crop(self, img: np.ndarray) -> Tuple[np.ndarray, Geometry]:
        h, w = img.shape[:2]
        small, sx, sy = resize_for(img, self.resize, self.mode)
        rh, rw = small.shape[:2]
        y0 = int(round((rh - self.crop) / 2.0))
        x0 = int(round((rw - self.crop) / 2.0))
        crop = small[y0:y0 + self.crop, x0:x0 + self.crop]
        return crop, Geometry(h, w, sx, sy, float(x0), float(y0), self.crop, self.crop)

    def __call__(self, img: np.ndarray) -> Tuple[np.ndarray, Geometry]:
        crop, geo = self.geometry_and_crop(img)
        return normalize(crop, self.mean, self.std), geo


# ---------------------------------------------------------------------------------------------
# training and evaluation pipelines (CheXNet: resize 256, random crop 224, flip; eval centre or ten crops)


def resize_square(img: np.ndarray, size: int) -> Tuple[np.ndarray, float, float]:
    """Resize to ``size x size`` (aspect not kept: cells are roughly round); returns the scales."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img, 1.0, 1.0
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp), size / w, size / h


def resized_shape(h: int, w: int, size: int, mode: str) -> Tuple[int, int]:
    """``(height, width)`` the resize step of ``data.resize_mode`` gives an ``h x w`` image."""
    if mode == "square":
        return size, size
    if h <= w:
        return size, max(1, int(round(w * size / h)))
    return max(1, int(round(h * size / w))), size


def resize_for(img: np.ndarray, size: int, mode: str) -> Tuple[np.ndarray, float, float]:
    """The resize step of ``data.resize_mode`` (``shorter`` or ``square``); also what the cache stores.

    Raises:
        BadImageError: the resized image would have more than :data:`MAX_RESIZED_PIXELS` pixels (a 20000x1
            strip with its shorter side taken to 256 would be 5,120,000 x 256), checked before allocating.
    """
    h, w = img.shape[:2]
    nh, nw = resized_shape(h, w, size, mode)
    if nh * nw > MAX_RESIZED_PIXELS:
        raise BadImageError(f"cannot resize an image of {w}x{h}: data.resize={size} ({mode} side) makes it {nw}x{nh} "
                            f"= {nh * nw:,} pixels, over {MAX_RESIZED_PIXELS:,} (its aspect ratio is too extreme)")
    return resize_square(img, size) if mode == "square" else resize_shorter(img, size)


class SquareEvalTransform(EvalTransform):
    """:class:`EvalTransform` for ``data.resize_mode: square``: resize to ``resize x resize``, centre-crop."""

    mode = "square"


def eval_transform(cfg) -> EvalTransform:
    """The evaluation transform the training run used (centre crop, geometry kept for CAMs)."""
    cls = SquareEvalTransform if cfg.data.resize_mode == "square" else EvalTransform
    return cls(cfg.data.resize, cfg.data.crop, cfg.data.mean, cfg.data.std)


class TrainTransform:
    """Resize, random ``crop``, random horizontal flip and 90-degree rotation, normalize.

    Randomness comes only from the ``rng`` passed to each call, so the dataset can seed it from
    ``(seed, epoch, index)``: the same run gives the same batches whatever the worker count, and a
    resumed run replays exactly the epochs an uninterrupted one would.
    """

    def __init__(self, resize: int, crop: int, mean: Sequence[float], std: Sequence[float],
                 hflip: bool = True, rot90: bool = False, mode: str = "shorter", color_jitter: float = 0.0):
        self.resize, self.crop, self.mean, self.std = int(resize), int(crop), tuple(mean), tuple(std)
        self.hflip, self.rot90, self.mode = bool(hflip), bool(rot90), mode
        self.color_jitter = float(color_jitter)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        small, _, _ = resize_for(img, self.resize, self.mode)
        h, w = small.shape[:2]
        y0 = int(rng.integers(0, h - self.crop + 1))
        x0 = int(rng.integers(0, w - self.crop + 1))
        out = small[y0:y0 + self.crop, x0:x0 + self.crop]
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        if self.rot90:
            out = np.rot90(out, int(rng.integers(0, 4)))
        out = np.ascontiguousarray(out)
        if self.color_jitter > 0:
            return self._jitter(out, rng)
        return normalize(out, self.mean, self.std)

    def _jitter(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random brightness, contrast, saturation and per-channel gain, each ``1 +- color_jitter``.

        Stain colour and intensity vary from slide to slide (and exposure from X-ray to X-ray); the
        per-channel gain imitates a stain shift, so the model must rely on local structure instead.
        """
        j = self.color_jitter
        b, c, s = rng.uniform(1 - j, 1 + j, 3)
        gain = rng.uniform(1 - j / 2, 1 + j / 2, 3)
        x = img.astype(np.float32) * (b / 255.0)
        x = (x - x.mean()) * c + x.mean()
        gray = x.mean(axis=2, keepdims=True)
        x = (gray + (x - gray) * s) * gain.astype(np.float32)
        x = np.clip(x, 0.0, 1.0)
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    @classmethod
    def from_config(cls, cfg) -> "TrainTransform":
        d = cfg.data
        return cls(d.resize, d.crop, d.mean, d.std, hflip=d.hflip, rot90=d.rot90, mode=d.resize_mode,
                   color_jitter=d.color_jitter)


class TenCrop:
    """Four corner crops and the centre crop, plus their horizontal mirrors -> ``[10, 3, crop, crop]``.

    CheXNet's evaluation averages the ten crops' probabilities (not logits); the engine does that.
    """

    def __init__(self, resize: int, crop: int, mean: Sequence[float], std: Sequence[float], mode: str = "shorter"):
        self.resize, self.crop, self.mean, self.std, self.mode = int(resize), int(crop), tuple(mean), tuple(std), mode

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return self.crops_and_geometry(img)[0]

    def crops_and_geometry(self, img: np.ndarray) -> Tuple[np.ndarray, List[Geometry]]:
        """The ten crops and the :class:`Geometry` of the first five (crop ``i + 5`` mirrors crop ``i``)."""
        small, sx, sy = resize_for(img, self.resize, self.mode)
        h, w, c = small.shape[0], small.shape[1], self.crop
        cy, cx = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
        offsets = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), (cy, cx)]
        crops = [small[y:y + c, x:x + c] for y, x in offsets]
        crops += [cr[:, ::-1] for cr in crops]
        x = np.stack([normalize(np.ascontiguousarray(cr), self.mean, self.std) for cr in crops])
        geos = [Geometry(img.shape[0], img.shape[1], sx, sy, float(x0), float(y0), c, c) for y0, x0 in offsets]
        return x, geos

    @classmethod
    def from_config(cls, cfg) -> "TenCrop":
        return cls(cfg.data.resize, cfg.data.crop, cfg.data.mean, cfg.data.std, cfg.data.resize_mode)


def crops_to_original(maps: np.ndarray, geos: Sequence[Geometry], interp: str = "linear") -> np.ndarray:
    """The maps of one crop ``[1, K, h, w]``, or of :class:`TenCrop`'s ten ``[10, K, h, w]`` averaged where
    they overlap (mirrors undone), in the original frame ``[K, orig_h, orig_w]``; NaN where no crop lies."""
    if len(geos) == 1:
        return geos[0].maps_to_original(maps[0], interp)
    total = count = None
    for i, m in enumerate(maps):
        if i >= 5:
            m = np.ascontiguousarray(m[..., ::-1])  # undo the mirror before placing the crop
        full = geos[i % 5].maps_to_original(m, interp)
        ok = np.isfinite(full)
        if total is None:
            total, count = np.zeros_like(full), np.zeros(full.shape, np.float32)
        total += np.where(ok, full, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
