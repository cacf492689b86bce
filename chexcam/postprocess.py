"""Map post-processing, written once: ReLU -> resize -> normalize, on NumPy ``[..., h, w]`` maps.

Every path that turns raw class maps into what a user sees goes through here: :func:`chexcam.explain`
(the dynamic graph), :class:`chexcam.Explainer` (the predictor), the per-image tools (maps mapped back to
the original image, ten crops averaged) and the mosaics. NumPy and OpenCV only, no paddle.

Bilinear resizing is OpenCV's ``INTER_LINEAR`` with half-pixel centres, the same sampling as paddle's
``F.interpolate(mode="bilinear", align_corners=False)``. NaN marks a pixel no crop saw: it stays NaN,
never bleeds into its neighbours, and is ignored by normalization.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import cv2
import numpy as np

from .errors import ChexcamError

NORMALIZE_MODES = ("none", "minmax", "global")
#: Smallest max-min range treated as non-constant; a flatter map normalizes to all zeros, never NaN.
EPS = 1e-7
_INTERP = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA}


def normalize_mode(normalize: Union[bool, str]) -> str:
    """``True`` -> ``"minmax"``, ``False`` -> ``"none"``, a mode name checked against :data:`NORMALIZE_MODES`."""
    mode = {True: "minmax", False: "none"}[normalize] if isinstance(normalize, bool) else normalize
    if mode not in NORMALIZE_MODES:
        raise ChexcamError(f"unknown normalization '{mode}'; expected one of {', '.join(NORMALIZE_MODES)}")
    return mode


def normalize_maps(maps: np.ndarray, mode: Union[bool, str] = "minmax", inplace: bool = False) -> np.ndarray:
    """Scale ``[..., K, H, W]`` maps to [0, 1].

    ``minmax``: each map by its own min and max (last two axes). ``global``: one min and max over all K maps
    of an image (last three axes), so a class with a weak map stays cold next to a strong one. ``none``:
    unchanged. NaN stays NaN and is ignored by the min and max; a map whose finite range is below
    :data:`EPS` becomes zeros (never NaN). ``inplace`` reuses a float32 ``maps`` for the result.
    """
    mode = normalize_mode(mode)
    if mode == "none":
        return maps
    axes = (-2, -1) if mode == "minmax" else (-3, -2, -1)
    lo = np.fmin.reduce(maps, axis=axes, keepdims=True)  # fmin/fmax skip NaN without a copy
    hi = np.fmax.reduce(maps, axis=axes, keepdims=True)
    rng = np.nan_to_num(hi - lo, nan=0.0)  # an all-NaN map has no range
    ok = rng > EPS
    into = maps if inplace and maps.dtype == np.float32 else None
    out = np.subtract(maps, np.where(ok, lo, 0.0), out=into, dtype=np.float32)  # NaN stays NaN
    out /= np.where(ok, rng, 1.0)
    if not ok.all():  # rare: a constant map becomes zeros (NaN where not covered), never NaN everywhere
        out[np.broadcast_to(~ok, out.shape) & np.isfinite(out)] = 0.0
    return out


def resize_maps(maps: np.ndarray, size: Tuple[int, int], interp: str = "linear") -> np.ndarray:
    """``[..., h, w]`` float maps -> ``[..., H, W]`` with ``size = (H, W)``.

    ``interp``: ``linear`` (half-pixel bilinear, as paddle's ``align_corners=False``), ``nearest`` (shows the
    true map cells) or ``area`` (for shrinking). Where a map has NaN, the finite values are resized with their
    coverage and renormalised by it: a border next to NaN keeps its own values, and an output pixel less than
    half covered is NaN.
    """
    if interp not in _INTERP:
        raise ChexcamError(f"unknown interpolation '{interp}'; expected one of {', '.join(_INTERP)}")
    out_h, out_w = int(size[0]), int(size[1])
    m = np.asarray(maps, dtype=np.float32)
    if m.shape[-2:] == (out_h, out_w):
        return m
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    flat = m.reshape(-1, h, w)
    out = np.empty((flat.shape[0], out_h, out_w), dtype=np.float32)
    flag = _INTERP[interp]
    for i, plane in enumerate(flat):
        valid = np.isfinite(plane)
        if valid.all():
            cv2.resize(plane, (out_w, out_h), dst=out[i], interpolation=flag)
            continue
        vals = cv2.resize(np.where(valid, plane, 0.0).astype(np.float32), (out_w, out_h), interpolation=flag)
        cover = cv2.resize(valid.astype(np.float32), (out_w, out_h), interpolation=flag)
        ok = cover >= 0.5
        out[i] = np.nan
        out[i][ok] = vals[ok] / cover[ok]
    return out.reshape(*lead, out_h, out_w)


def postprocess(maps: np.ndarray, size: Optional[Tuple[int, int]] = None, normalize: Union[bool, str] = True,
                relu: bool = False) -> np.ndarray:
    """Raw ``[B, K, h, w]`` class maps -> what ``explain`` returns: ReLU, bilinear resize, normalization.

    Args:
        maps: raw maps (logit units for CAM), float32.
        size: ``(H, W)`` to resize to, or ``None`` to keep the map resolution.
        normalize: ``True``/``"minmax"``, ``"global"``, ``False``/``"none"`` (see :func:`normalize_maps`).
        relu: clamp negative evidence to zero first.

    Returns:
        A new float32 array (``maps`` is never modified).
    """
    mode = normalize_mode(normalize)
    m = np.asarray(maps, dtype=np.float32)
    owned = False  # whether m is already a new array that may be overwritten
    if relu:
        m, owned = np.maximum(m, 0.0), True
    if size is not None and m.shape[-2:] != tuple(size):
        m, owned = resize_maps(m, size), True
    if mode == "none":
        return m if owned else m.copy()
    return normalize_maps(m, mode, inplace=owned)


def upsample_size(upsample: Union[bool, Tuple[int, int]], input_hw: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """``explain``'s ``upsample`` argument -> a ``(H, W)`` or ``None``: ``True`` means the input size."""
    if upsample is True:
        return int(input_hw[0]), int(input_hw[1])
    if not upsample:
        return None
    try:
        h, w = (int(v) for v in upsample)
    except (TypeError, ValueError):
        raise ChexcamError(f"upsample must be True, False or an (H, W) pair, got {upsample!r}") from None
    return h, w
