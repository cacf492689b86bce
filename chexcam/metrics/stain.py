"""Giemsa stain as localization truth for malaria cells, without annotation.

The malaria cell images carry no boxes, but the parasites are what Giemsa stains: chromatin and cytoplasm of
*Plasmodium* show as small dark purple spots on the pale pink red cell. A colour rule in CIELAB finds them:

    stain(x, y) = cell(x, y)  and  L*(x, y) < median_cell(L*) - dark  and  b*(x, y) < median_cell(b*) - blue

i.e. a pixel **much darker than the cell's median lightness** (``dark = 15`` L* units of 100) **and shifted to
blue/purple** (``blue = 6`` b* units below the cell's median; the pink cytoplasm has b* > 0, the parasite's
magenta-purple less). ``cell`` is every pixel brighter than the black background the crops are padded with
(max RGB > 25), eroded by one pixel so the dark anti-aliased rim (mixed with black: darker and greyer, hence
"bluer" than pink) is not taken for stain. Medians make the rule follow each slide's overall staining (some
cells are pink, others lilac).

On the 300 bundled cells at the demo's 96 px (``tests/test_compare.py`` checks these figures): 93% of the
parasitized cells have at least :data:`MIN_PIXELS` stain pixels, 5% of the uninfected ones (debris, platelets
or overlapping cells on the smear). It is a proxy, not an annotation: it marks every dark purple spot, and it
misses a parasite at the very edge of a cell.

Metrics on a map at the network input (:func:`stain_pointing`, :func:`box_stain_share`): the distance from the
map's maximum to the nearest stain pixel (a hit within 4 px and 8 px at 96 px, scaled with the input size)
and the share of the area of the map's boxes that is stain.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import cv2
import numpy as np

#: L* units (0..100) a stain pixel is darker than the cell's median lightness
DARK = 15.0
#: b* units a stain pixel is bluer than the cell's median
BLUE = 6.0
#: max(R, G, B) above which a pixel belongs to the cell, not the black padding
BACKGROUND = 25
#: a cell with fewer stain pixels has no stain (its pointing game is not scored)
MIN_PIXELS = 3
#: the pointing-game tolerances, px at a 96 px input (one feature cell at output stride 4 and 8)
TOLERANCES_96 = (4.0, 8.0)


def cell_mask(rgb: np.ndarray, background: int = BACKGROUND, erode: int = 1) -> np.ndarray:
    """``bool [H, W]``: the cell (pixels brighter than the padding), eroded by ``erode`` px."""
    cell = np.asarray(rgb).max(axis=2) > background
    if erode > 0:
        k = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
        cell = cv2.erode(cell.astype(np.uint8), k, borderValue=0).astype(bool)
    return cell


def stain_mask(rgb: np.ndarray, dark: float = DARK, blue: float = BLUE, background: int = BACKGROUND,
               erode: int = 1) -> np.ndarray:
    """``bool [H, W]``: the stain pixels of an RGB uint8 cell image (the module's rule)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {list(rgb.shape)}")
    cell = cell_mask(rgb, background, erode)
    if not cell.any():
        return cell
    lab = cv2.cvtColor(rgb.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2LAB)  # L* 0..100, b* about -107..94
    lum, bstar = lab[..., 0], lab[..., 2]
    return cell & (lum < np.median(lum[cell]) - dark) & (bstar < np.median(bstar[cell]) - blue)


def distance_to_stain(mask: np.ndarray) -> np.ndarray:
    """``float32 [H, W]``: Euclidean distance (px, between pixel centres) from each pixel to the nearest stain
    pixel; ``inf`` everywhere when there is none."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def stain_pointing(point: Tuple[float, float], mask: np.ndarray, tolerances: Sequence[float] = TOLERANCES_96
                   ) -> Dict[float, bool]:
    """Pointing game against stain: ``{tolerance: hit}``, a hit when the pixel holding ``point = (x, y)`` (a map's
    maximum, pixel-edge coordinates as :func:`chexcam.boxes.peak_point`) lies within ``tolerance`` px of stain."""
    h, w = np.asarray(mask).shape
    c = min(max(int(np.floor(point[0])), 0), w - 1)
    r = min(max(int(np.floor(point[1])), 0), h - 1)
    d = float(distance_to_stain(mask)[r, c])
    return {float(t): d <= float(t) for t in tolerances}


def box_stain_share(boxes: Sequence[Sequence[float]], mask: np.ndarray) -> float:
    """Share of the area of the union of ``boxes`` (``x1, y1, x2, y2``, pixel edges) that is stain; NaN without
    boxes."""
    mask = np.asarray(mask, bool)
    inside = np.zeros(mask.shape, bool)
    for x1, y1, x2, y2 in (b[:4] for b in boxes):
        inside[max(int(np.floor(y1)), 0):int(np.ceil(y2)), max(int(np.floor(x1)), 0):int(np.ceil(x2))] = True
    n = int(inside.sum())
    return float((mask & inside).sum()) / n if n else float("nan")


def scaled_tolerances(size: int, tolerances_96: Sequence[float] = TOLERANCES_96) -> Tuple[float, ...]:
    """The tolerances at an input of ``size`` px (4 and 8 px at 96 px -> 5.33 and 10.67 px at 128 px)."""
    return tuple(float(t) * size / 96.0 for t in tolerances_96)


def overlay_stain(rgb: np.ndarray, mask: np.ndarray, color=(0, 255, 0)) -> np.ndarray:
    """A copy of the image with the stain pixels painted ``color`` (to show the rule on cells)."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[np.asarray(mask, bool)] = color
    return out


__all__ = ["DARK", "BLUE", "BACKGROUND", "MIN_PIXELS", "TOLERANCES_96", "cell_mask", "stain_mask",
           "distance_to_stain", "stain_pointing", "box_stain_share", "scaled_tolerances", "overlay_stain"]
