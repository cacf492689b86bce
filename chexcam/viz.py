"""Overlays, mosaics and colour bars: the only place where maps in [0, 1] become uint8 pixels.

Knows nothing of paddle: inputs are numpy arrays (RGB uint8 images, float maps in [0, 1]).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np

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


def overlay(image: np.ndarray, m: np.ndarray, colormap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """Blend a heatmap over an RGB uint8 image (the map is resized to the image when needed)."""
    h, w = image.shape[:2]
    if m.shape != (h, w):
        m = cv2.resize(np.nan_to_num(m, nan=0.0).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = colorize(m, colormap)
    return cv2.addWeighted(heat, float(alpha), image, 1.0 - float(alpha), 0.0)


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], color=(0, 255, 0), thickness: int = 2):
    """Draw ``(x1, y1, x2, y2)`` boxes on a copy of an RGB image."""
    out = image.copy()
    for x1, y1, x2, y2 in boxes:
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
) -> np.ndarray:
    """The original plus one labelled overlay per class, in a grid (3x5 for the 14 findings).

    ``maps`` is ``[K, H, W]`` in [0, 1] at the image's resolution or any other (resized here);
    ``boxes[k]`` are optional ``(x1, y1, x2, y2)`` boxes in the image's pixels.
    """
    k = len(maps)
    if cols is None:
        cols = 5 if k + 1 > 4 else k + 1
    h, w = image.shape[:2]
    s = tile / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    base = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    tiles = [label_tile(base, "Original")]
    for i in range(k):
        t = overlay(base, maps[i], colormap, alpha)
        if boxes is not None and len(boxes[i]):
            t = draw_boxes(t, [[v * s for v in b] for b in boxes[i]])
        tiles.append(label_tile(t, titles[i]))
    sheet = grid(tiles, cols)
    if with_colorbar:
        bar = colorbar(sheet.shape[0] - 8, 20, colormap)
        pad = np.full((sheet.shape[0], bar.shape[1] + 4, 3), 255, np.uint8)
        pad[4:4 + bar.shape[0], :bar.shape[1]] = bar
        sheet = np.concatenate([sheet, pad], axis=1)
    return sheet


def save_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG."""
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
