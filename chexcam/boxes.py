"""Boxes from class maps: fixed-size boxes around peaks, or one box per thresholded region.

Maps are ``[H, W]`` float arrays in any frame (network input or original image); NaN marks pixels the
map does not cover (outside a centre crop) and never yields a peak or a region. Boxes are
``(x1, y1, x2, y2)`` in continuous pixel-edge coordinates of that frame (pixel ``i`` spans
``[i, i + 1)``), the convention of :class:`chexcam.data.transforms.Geometry` and of NIH's
``BBox_List_2017.csv`` after ``x2 = x + w``.
"""

from __future__ import annotations

from typing import List, Tuple

import cv2
import numpy as np

from .errors import ChexcamError
from .postprocess import resize_maps

BOX_MODES = ("regions", "peaks")
#: A map whose finite range is below this has no peak and no region (a constant map says nothing).
EPS = 1e-7


def _finite(m: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """``m`` with NaN replaced by its finite minimum, and that minimum and maximum."""
    m = np.asarray(m)
    if m.ndim != 2:
        raise ChexcamError(f"expected a 2-D map [H, W], got shape {list(m.shape)}")
    if not np.issubdtype(m.dtype, np.floating):
        m = m.astype(np.float32)
    valid = np.isfinite(m)
    if valid.all():
        return m, float(m.min()), float(m.max())
    if not valid.any():
        return np.zeros(m.shape, np.float32), 0.0, 0.0
    lo = float(np.where(valid, m, np.inf).min())
    filled = np.where(valid, m, lo).astype(m.dtype)
    return filled, lo, float(filled.max())


def region_boxes(m: np.ndarray, threshold: float = 0.5, max_boxes: int = 3) -> Tuple[np.ndarray, np.ndarray]:
    """One box per connected region of ``m >= threshold * max(m)``, largest region first.

    As in the CAM paper (Zhou et al. 2016: 20% of the max) and Wang et al. 2017. 8-connectivity (OpenCV's
    connected components, the regions ``skimage.measure.label(connectivity=2)`` finds, at a fraction of the
    cost); ties in size go to the stronger region, then to the upper-left one.

    Returns:
        ``boxes [N, 4]`` (x1, y1, x2, y2) and ``scores [N]`` (each region's peak value), N <= max_boxes.
    """
    m = np.asarray(m)
    if m.ndim != 2:
        raise ChexcamError(f"expected a 2-D map [H, W], got shape {list(m.shape)}")
    lo, hi = float(np.fmin.reduce(m, axis=None)), float(np.fmax.reduce(m, axis=None))  # NaN skipped
    empty = np.zeros((0, 4)), np.zeros((0,))
    if not hi > 0 or not hi - lo >= EPS or max_boxes < 1:
        return empty
    mask = (m >= threshold * hi).view(np.uint8)  # NaN compares False
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_GRANA)
    if n <= 1:
        return empty
    x, y, w, h, area = (stats[1:, i] for i in range(5))
    peak = np.empty(n - 1)
    for j in range(n - 1):  # each region's maximum, read inside its own bounding box
        sl = (slice(y[j], y[j] + h[j]), slice(x[j], x[j] + w[j]))
        peak[j] = m[sl][labels[sl] == j + 1].max()
    keep = sorted(range(n - 1), key=lambda j: (-area[j], -peak[j], y[j], x[j], y[j] + h[j], x[j] + w[j]))[:max_boxes]
    boxes = np.array([[x[j], y[j], x[j] + w[j], y[j] + h[j]] for j in keep], dtype=np.float64)
    return boxes.reshape(-1, 4), peak[keep].astype(np.float64)


def peak_boxes(m: np.ndarray, num_peaks: int = 3, min_distance: int = 1, threshold_rel: float = 0.5,
               box_size: Tuple[float, float] = (12.0, 12.0)) -> Tuple[np.ndarray, np.ndarray]:
    """A ``box_size = (width, height)`` box centred on each of the strongest local maxima of ``m``.

    Peaks come from ``skimage.feature.peak_local_max(num_peaks, min_distance, threshold_rel)``, the
    malaria localization recipe (up to 3 peaks, 12x12 boxes on 64x64 cells). Boxes are clipped to the map.

    Returns:
        ``boxes [N, 4]`` and ``scores [N]`` (peak values), strongest first.
    """
    from skimage.feature import peak_local_max

    filled, lo, hi = _finite(m)
    empty = np.zeros((0, 4)), np.zeros((0,))
    if hi - lo < EPS or num_peaks < 1:
        return empty
    # shift so the weakest finite value is 0: threshold_rel is then relative to the map's own range
    peaks = peak_local_max(filled - lo, min_distance=max(1, int(min_distance)), threshold_rel=threshold_rel,
                           num_peaks=int(num_peaks), exclude_border=False)
    h, w = filled.shape
    bw, bh = float(box_size[0]), float(box_size[1])
    boxes, scores = [], []
    for r, c in peaks:
        cx, cy = c + 0.5, r + 0.5
        boxes.append([max(cx - bw / 2, 0.0), max(cy - bh / 2, 0.0), min(cx + bw / 2, w), min(cy + bh / 2, h)])
        scores.append(filled[r, c])
    if not boxes:
        return empty
    return np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)


def peak_point(m: np.ndarray) -> Tuple[float, float]:
    """``(x, y)`` centre of the map's maximum pixel (first in row-major order), NaN ignored."""
    m = np.asarray(m)
    if m.ndim == 2 and np.issubdtype(m.dtype, np.floating):  # the common case, without a filled copy
        lo, hi = float(np.fmin.reduce(m, axis=None)), float(np.fmax.reduce(m, axis=None))
        if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
            r, c = np.unravel_index(int(np.argmax(m == hi)), m.shape)
            return float(c) + 0.5, float(r) + 0.5
    filled, _, _ = _finite(m)
    r, c = np.unravel_index(int(np.argmax(filled)), filled.shape)
    return float(c) + 0.5, float(r) + 0.5


def boxes_from_map(m: np.ndarray, mode: str = "regions", max_boxes: int = 3, threshold: float = 0.5,
                   min_distance: int = 1, threshold_rel: float = 0.5,
                   box_size: Tuple[float, float] = (12.0, 12.0)) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`region_boxes` or :func:`peak_boxes` by ``mode`` (``regions`` | ``peaks``)."""
    if mode == "regions":
        return region_boxes(m, threshold, max_boxes)
    if mode == "peaks":
        return peak_boxes(m, max_boxes, min_distance, threshold_rel, box_size)
    raise ChexcamError(f"unknown box mode '{mode}'; expected one of {', '.join(BOX_MODES)}")


def search_grid(size: Tuple[int, int], crop: int) -> Tuple[int, int]:
    """The ``(h, w)`` grid a map of ``size`` is searched on: its longer side at twice the network input
    ``crop`` (never larger than the map). A map holds no detail finer than a feature cell (32 input px for
    DenseNet121), so a finer search only costs time."""
    h, w = size
    scale = min(1.0, 2.0 * crop / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def boxes_for_maps(maps: np.ndarray, loc, crop: int, scale_x: float, scale_y: float
                   ) -> Tuple[List[np.ndarray], List[np.ndarray], List[Tuple[float, float]]]:
    """Boxes, scores and peak points of every map of an image, sized in network-input units.

    Args:
        maps: ``[K, H, W]`` maps in the frame the boxes are wanted in (e.g. the original image), NaN allowed.
        loc: the ``localization`` config section (``boxes``, ``max_boxes``, ``threshold``, ``peak_size``,
            ``min_distance``, ``threshold_rel``); sizes are fractions of the network input ``crop``.
        crop: the network input side, px.
        scale_x, scale_y: network-input pixels per pixel of ``maps`` (``Geometry.sx``/``sy`` for the original).

    Maps larger than twice the network input are searched at that size (boxes and peaks scaled back): a map
    holds no detail finer than its feature cells (32 input px for DenseNet121), and labelling 1024x1024 maps
    of 14 classes would dominate the run time.
    """
    h, w = maps.shape[-2:]
    scale = min(1.0, 2.0 * crop / max(h, w))
    size = (loc.peak_size * crop / scale_x * scale, loc.peak_size * crop / scale_y * scale)
    dist = max(1, int(round(loc.min_distance * crop / (0.5 * (scale_x + scale_y)) * scale)))
    small_h, small_w = search_grid((h, w), crop)
    fx, fy = w / small_w, h / small_h
    boxes, scores, peaks = [], [], []
    for m in maps:
        if scale < 1.0:
            m = resize_maps(m, (small_h, small_w), "area")
        b, s = boxes_from_map(m, loc.boxes, loc.max_boxes, loc.threshold, dist, loc.threshold_rel, size)
        boxes.append(b * np.array([fx, fy, fx, fy]))
        scores.append(s)
        px, py = peak_point(m)
        peaks.append((px * fx, py * fy))
    return boxes, scores, peaks
