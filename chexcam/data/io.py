"""Robust image decoding with OpenCV: any PNG/JPEG mode in, 8-bit RGB out, one-line errors.

Grayscale is replicated to three channels, the alpha of RGBA is dropped (the NIH release has a few
RGBA files whose alpha is constant), and 16-bit images are stretched per image from their own min..max
to 0..255 (12-bit data stored in 16-bit containers would otherwise turn almost black).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from ..errors import BadImageError

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def _check_complete(path: str, data: bytes) -> None:
    """Reject truncated PNG/JPEG files, which OpenCV may decode partially without an error."""
    if data.startswith(_PNG_SIG):
        if _PNG_END not in data[-64:]:
            raise BadImageError(f"truncated PNG (no IEND chunk): {path}")
    elif data.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in data[-1024:]:
            raise BadImageError(f"truncated JPEG (no end-of-image marker): {path}")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit copy of an image: uint8 unchanged, higher depths stretched from their own min..max."""
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float64)
    lo, hi = float(img.min()), float(img.max())
    if hi - lo <= 0:
        return np.zeros(img.shape, dtype=np.uint8)
    return np.clip(np.rint((img - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_rgb(img: np.ndarray, path: str = "<array>") -> np.ndarray:
    """OpenCV-decoded array (gray, BGR or BGRA, any depth) -> uint8 RGB ``[H, W, 3]``."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    img = to_uint8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise BadImageError(f"unsupported image layout {img.shape}: {path}")


def read_image(path: str) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]``.

    Raises:
        BadImageError: missing, empty, truncated or undecodable file (the message names it).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadImageError(f"image not found: {path}")
    if os.path.isdir(path):
        raise BadImageError(f"expected an image file, got a directory: {path}")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise BadImageError(f"cannot read image {path}: {exc.strerror}") from None
    if not data:
        raise BadImageError(f"empty image file: {path}")
    _check_complete(path, data)
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise BadImageError(f"cannot decode image (corrupt or not an image): {path}")
    return to_rgb(img, path)
