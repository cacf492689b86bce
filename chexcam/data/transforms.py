"""Deterministic preprocessing with a record of the geometry, so maps can go back to the original.

``EvalTransform`` resizes (shorter side to ``resize``), centre-crops ``crop`` and normalizes; the
returned :class:`Geometry` maps any point or map of the network input back to the original image's
pixel coordinates (the coordinates of NIH's ``BBox_List_2017.csv`` for a 1024x1024 image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np


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

    def __init__(self, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]):
        self.resize, self.crop, self.mean, self.std = int(resize), int(crop), tuple(mean), tuple(std)

    def geometry_and_crop(self, img: np.ndarray) -> Tuple[np.ndarray, Geometry]:
        h, w = img.shape[:2]
        small, sx, sy = resize_shorter(img, self.resize)
        rh, rw = small.shape[:2]
        y0 = int(round((rh - self.crop) / 2.0))
        x0 = int(round((rw - self.crop) / 2.0))
        crop = small[y0:y0 + self.crop, x0:x0 + self.crop]
        return crop, Geometry(h, w, sx, sy, float(x0), float(y0), self.crop, self.crop)

    def __call__(self, img: np.ndarray) -> Tuple[np.ndarray, Geometry]:
        crop, geo = self.geometry_and_crop(img)
        return normalize(crop, self.mean, self.std), geo

    @classmethod
    def from_config(cls, cfg) -> "EvalTransform":
        return cls(cfg.data.resize, cfg.data.crop, cfg.data.mean, cfg.data.std)
