"""A one-time cache of resized uint8 images (``tools/prepare_data.py``), read instead of the originals.

Decoding a 1024x1024 NIH PNG costs far more than the network's forward pass on a GPU; the cache stores
each image already resized (the ``data.resize_mode``/``data.resize`` step of the transforms), as PNG
(lossless; single-channel when the image is gray, as X-rays are). Entries live under
``cache_dir/<mode><size>/`` so caches of different sizes never mix, and are named by a hash of the
original's absolute path plus its file name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

import cv2
import numpy as np

from ..config import DEFAULT_MAX_PIXELS
from ..errors import BadImageError, DataError
from ..utils import atomic_path
from .io import read_image
from .transforms import resize_for

logger = logging.getLogger(__name__)


def cache_folder(cfg) -> Optional[str]:
    if not cfg.data.cache_dir:
        return None
    return os.path.join(cfg.data.cache_dir, f"{cfg.data.resize_mode}{cfg.data.resize}")


def cache_path(folder: str, path: str) -> str:
    digest = hashlib.sha1(os.path.abspath(path).encode("utf-8")).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(folder, digest[:2], f"{digest}_{stem}.png")


def write_cached(src: str, dst: str, size: int, mode: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Read ``src`` (at most ``max_pixels``), resize it, write ``dst`` atomically (gray PNG when all channels
    are equal)."""
    img = read_image(src, max_pixels)
    try:
        small, _, _ = resize_for(img, size, mode)
    except BadImageError as exc:
        raise BadImageError(f"{src}: {exc}") from None
    if np.array_equal(small[..., 0], small[..., 1]) and np.array_equal(small[..., 0], small[..., 2]):
        out = small[..., 0]
    else:
        out = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", out, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError(f"cannot encode cache entry for {src}")
    with atomic_path(dst) as tmp, open(tmp, "wb") as fh:
        fh.write(buf.tobytes())
