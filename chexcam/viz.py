"""Overlays, mosaics and colour bars: the only place where maps in [0, 1] become uint8 pixels.

Knows nothing of paddle: inputs are numpy arrays (RGB uint8 images, float maps in [0, 1]).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import cv2
import numpy as np

from .postprocess import resize_maps

COLORMAPS = {
    "jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA, "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT,
    "plasma": cv2.COLORMAP_PLASMA, "bone": cv2.COLORMAP_BONE,
}


def map_to_uint8(m: np.ndarray) -> np.ndarray:
    """[0, 1] float map -> uint8 (NaN, e.g. outside a crop, becomes 0)."""
    return np.rint(np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)


def colorize(m: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """[0, 1] map ``[H, W]`` -> RGB uint8 heatmap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap '{colormap}'; expected one of {', '.join(sorted(COLORMAPS))}")
    bgr = cv2.applyColorMap(map_to_uint8(m), COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_map(m: np.ndarray, size) -> np.ndarray:
    """Resize a float map to ``size = (w, h)`` (area when shrinking, bilinear when enlarging); NaN (not covered)
    stays NaN and never bleeds into values (:func:`chexcam.postprocess.resize_maps`)."""
    w, h = size
    m = np.asarray(m, dtype=np.float32)
    interp = "area" if h < m.shape[0] or w < m.shape[1] else "linear"
    return resize_maps(m, (h, w), interp)


def outside(image: np.ndarray, grey: int = 160, keep: float = 0.45) -> np.ndarray:
    """How pixels a map does not cover are drawn: the image faded towards neutral grey, no colour.

    A colormap's 0 (blue for ``jet``) would claim "no evidence here"; the truth is "not looked at".
    """
    return np.rint(image.astype(np.float32) * keep + grey * (1.0 - keep)).astype(np.uint8)


def overlay(image: np.ndarray, m: np.ndarray, colormap: str = "jet", alpha: float = 0.4,
            faded: Optional[np.ndarray] = None) -> np.ndarray:
    """Blend a heatmap over an RGB uint8 image (the map is resized to the image when needed).

    NaN pixels of the map (outside the network's crop) show the image faded to grey (:func:`outside`;
    ``faded`` is ``outside(image)`` made once by a caller that draws many maps on one image).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = image.shape[:2]
    m = resize_map(m, (w, h))
    heat = colorize(m, colormap)
    out = cv2.addWeighted(heat, float(alpha), image, 1.0 - float(alpha), 0.0)
    nan = ~np.isfinite(m)
    if nan.any():
        np.copyto(out, outside(image) if faded is None else faded, where=nan[..., None])
    return out


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], color=(255, 255, 255), thickness: int = 2):
    """Draw ``(x1, y1, x2, y2)`` pixel-edge boxes on a copy of an RGB image."""
    out = image.copy()
    for x1, y1, x2, y2 in (b[:4] for b in boxes):
        cv2.rectangle(out, (int(round(x1)), int(round(y1))), (int(round(x2)) - 1, int(round(y2)) - 1),
                      color, thickness)
    return out


def label_tile(tile: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` on a dark band at the top of a tile (scaled to the tile width)."""
    out = tile.copy()
    w = out.shape[1]
    scale = max(0.35, w / 560.0)
    thick = max(1, int(round(scale * 1.6)))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    band = th + base + 6
    out[:band] = (out[:band].astype(np.float32) * 0.35).astype(np.uint8)
    cv2.putText(out, text, (4, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def colorbar(height: int, width: int = 24, colormap: str = "jet") -> np.ndarray:
    """Vertical colour bar (1 at the top, 0 at the bottom) with its end values written on it."""
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    bar = colorize(ramp, colormap)
    pad = np.full((height, 34, 3), 255, np.uint8)
    cv2.putText(pad, "1", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(pad, "0", (4, height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, pad], axis=1)


def grid(tiles: Sequence[np.ndarray], cols: int, pad: int = 4, fill: int = 255) -> np.ndarray:
    """Arrange equally sized RGB tiles in rows of ``cols`` (empty cells stay ``fill``)."""
    h, w = tiles[0].shape[:2]
    rows = int(math.ceil(len(tiles) / cols))
    canvas = np.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), fill, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y:y + h, x:x + w] = t
    return canvas


def mosaic(
    image: np.ndarray,
    maps: np.ndarray,
    titles: Sequence[str],
    cols: Optional[int] = None,
    colormap: str = "jet",
    alpha: float = 0.4,
    tile: int = 256,
    boxes: Optional[Sequence[Sequence[Sequence[float]]]] = None,
    with_colorbar: bool = True,
    order: Optional[Sequence[int]] = None,
    segments: Optional[np.ndarray] = None,
    keep: Optional[Sequence[Optional[Sequence[int]]]] = None,
    boundary_color=(255, 255, 0),
) -> np.ndarray:
    """The original plus one labelled overlay per class, in a grid (3x5 for the 14 findings).

    ``maps`` is ``[K, H, W]`` in [0, 1] at the image's resolution or any other (resized here; NaN
    marks pixels outside the network's crop); ``boxes[k]`` are optional ``(x1, y1, x2, y2)`` boxes in
    the image's pixels; ``order`` lists the class indices in tile order (e.g. by probability).

    LIME: ``segments`` are superpixel labels in the image's frame (any resolution: resized with nearest
    neighbours, so a label never blends into another; negative = no superpixel) and ``keep[k]`` the labels
    whose boundaries class ``k``'s tile outlines (its top-k positive superpixels), drawn with
    :func:`mark_superpixels` as the LIME tutorials draw ``mark_boundaries(image, mask)``.
    """
    k = len(maps)
    if len(titles) != k:
        raise ValueError(f"{len(titles)} titles for {k} maps")
    if (segments is None) != (keep is None) or (keep is not None and len(keep) != k):
        raise ValueError(f"segments and keep go together, keep with one list per map ({k})")
    order = list(range(k)) if order is None else list(order)
    if cols is None:
        cols = 5 if k + 1 > 4 else k + 1
    h, w = image.shape[:2]
    s = tile / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    base = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    tiles = [label_tile(base, "Original")]
    thick = max(1, tile // 128)
    seg = None if segments is None else superpixel_labels_at(segments, size)
    faded = outside(base)
    for i in order:
        t = overlay(base, maps[i], colormap, alpha, faded)
        if seg is not None:
            t = mark_superpixels(t, seg, keep[i], boundary_color)
        if boxes is not None and len(boxes[i]):
            t = draw_boxes(t, [[v * s for v in b[:4]] for b in boxes[i]], thickness=thick)
        tiles.append(label_tile(t, titles[i]))
    sheet = grid(tiles, cols)
    return add_colorbar(sheet, colormap) if with_colorbar else sheet


def add_colorbar(sheet: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Append a vertical colour bar to the right of a sheet."""
    bar = colorbar(sheet.shape[0] - 8, 20, colormap)
    pad = np.full((sheet.shape[0], bar.shape[1] + 4, 3), 255, np.uint8)
    pad[4:4 + bar.shape[0], :bar.shape[1]] = bar
    return np.concatenate([sheet, pad], axis=1)


def fit_tile(image: np.ndarray, tile: int, fill: int = 255) -> np.ndarray:
    """Letterbox an RGB image into a ``tile x tile`` square (aspect kept)."""
    h, w = image.shape[:2]
    s = tile / max(h, w)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.full((tile, tile, 3), fill, np.uint8)
    y, x = (tile - nh) // 2, (tile - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def cell_tiles(image: np.ndarray, m: np.ndarray, boxes: Sequence[Sequence[float]], tile: int = 128,
               colormap: str = "jet", alpha: float = 0.4, segments: Optional[np.ndarray] = None,
               keep: Optional[Sequence[int]] = None) -> List[np.ndarray]:
    """The malaria article's three panels for one image and class: heatmap overlay, and the original
    with the class's boxes (the original itself is the row's first tile). LIME: ``segments`` (superpixel
    labels in the image's frame) and ``keep`` outline the class's top superpixels on the heatmap."""
    heat = overlay(image, m, colormap, alpha)
    if segments is not None:
        heat = mark_superpixels(heat, segments, keep)
    thick = max(1, int(round(max(image.shape[:2]) / tile)))
    boxed = draw_boxes(image, boxes, color=(0, 255, 0), thickness=thick)
    return [fit_tile(heat, tile), fit_tile(boxed, tile)]


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], row_titles: Sequence[str], col_titles: Sequence[str],
                  wrap: int = 8, colormap: Optional[str] = "jet", pad: int = 4) -> np.ndarray:
    """Many images x chosen classes: one row of equal square tiles per image, a header of column titles.

    Rows are written as labels on their first tile; more than ``wrap`` rows continue in a further block
    to the right, so 16 cells make two blocks of eight.
    """
    if not rows:
        raise ValueError("contact sheet needs at least one row")
    t = rows[0][0].shape[0]
    ncol = len(col_titles)
    head = [label_tile(np.full((max(18, t // 6), t, 3), 255, np.uint8), c)[: max(18, t // 6)] for c in col_titles]
    blocks = []
    for start in range(0, len(rows), max(1, wrap)):
        chunk = rows[start:start + wrap]
        tiles = list(head)
        for r, title in zip(chunk, row_titles[start:start + wrap]):
            if len(r) != ncol:
                raise ValueError(f"row with {len(r)} tiles for {ncol} columns")
            tiles.extend([label_tile(r[0], title)] + list(r[1:]))
        blocks.append(_rows_of(tiles, ncol, t, pad))
    height = max(b.shape[0] for b in blocks)
    blocks = [np.pad(b, ((0, height - b.shape[0]), (0, 0), (0, 0)), constant_values=255) for b in blocks]
    sheet = np.concatenate(blocks, axis=1)
    return add_colorbar(sheet, colormap) if colormap else sheet


def _rows_of(tiles: Sequence[np.ndarray], cols: int, t: int, pad: int) -> np.ndarray:
    """Like :func:`grid` but the first ``cols`` tiles (the header) may be shorter than the rest."""
    header, body = tiles[:cols], tiles[cols:]
    hh = header[0].shape[0]
    top = np.full((hh + pad, cols * t + (cols + 1) * pad, 3), 255, np.uint8)
    for c, h in enumerate(header):
        top[pad:pad + hh, pad + c * (t + pad):pad + c * (t + pad) + t] = h
    return np.concatenate([top, grid(body, cols, pad)], axis=0)


def save_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG."""
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


# ---------------------------------------------------------------------------------------------
# LIME: superpixel boundaries


def superpixel_labels_at(segments: np.ndarray, size) -> np.ndarray:
    """Superpixel labels ``[h, w]`` resized to ``size = (w, h)`` with nearest neighbours (labels stay labels)."""
    w, h = size
    seg = np.asarray(segments)
    if seg.shape == (h, w):
        return seg
    return cv2.resize(seg.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)


def mark_superpixels(image: np.ndarray, segments: np.ndarray, keep: Optional[Sequence[int]] = None,
                     color=(255, 255, 0)) -> np.ndarray:
    """Outline superpixels on a copy of an RGB uint8 image with ``skimage.segmentation.mark_boundaries``.

    ``segments`` are LIME's labels (any resolution: resized to the image with nearest neighbours); ``keep``
    the labels to outline (e.g. the top-k positive superpixels, ``LimeResult.top_superpixels``), or ``None``
    for all of them. As the LIME tutorials draw ``mark_boundaries(image, mask)``.
    """
    from skimage.segmentation import mark_boundaries

    h, w = image.shape[:2]
    seg = superpixel_labels_at(segments, (w, h)).astype(np.int64)
    lab = seg + 1 if keep is None else np.where(np.isin(seg, np.asarray(list(keep), dtype=np.int64)), seg + 1, 0)
    if not lab.any():
        return image.copy()
    rgb = mark_boundaries(image, lab, color=tuple(c / 255.0 for c in color), mode="outer", background_label=0)
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
