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
from typing import Dict, Optional

import cv2
import numpy as np
from tqdm import tqdm

from ..config import DEFAULT_MAX_PIXELS
from ..errors import BadImageError, DataError
from ..utils import atomic_path, remove_stale_temps
from .io import read_image
from .samples import SPLITS
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
    small, _, _ = resize_for(img, size, mode)
    if np.array_equal(small[..., 0], small[..., 1]) and np.array_equal(small[..., 0], small[..., 2]):
        out = small[..., 0]
    else:
        out = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", out, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DataError(f"cannot encode cache entry for {src}")
    with atomic_path(dst) as tmp, open(tmp, "wb") as fh:
        fh.write(buf.tobytes())


def prepare_cache(cfg, splits=SPLITS) -> Dict[str, int]:
    """Fill the cache for the given splits; existing entries are kept. Returns counts.

    Bad images follow ``data.on_bad_image`` (``error``: stop naming the file; ``skip``: log and count).
    """
    from .datasets import build_split

    folder = cache_folder(cfg)
    if folder is None:
        raise DataError("data.cache_dir is not set: pass -o data.cache_dir=FOLDER")
    remove_stale_temps(folder, recursive=True)
    counts = {"written": 0, "existing": 0, "skipped": 0}
    for split in splits:
        # progress on a terminal only: a log file or a pipe gets the summary line (and any error) alone
        for s in tqdm(build_split(cfg, split), desc=f"cache {split}", unit="img", disable=None):
            dst = cache_path(folder, s.path)
            if os.path.isfile(dst):
                counts["existing"] += 1
                continue
            try:
                write_cached(s.path, dst, cfg.data.resize, cfg.data.resize_mode, cfg.data.max_pixels)
            except BadImageError as exc:
                if cfg.data.on_bad_image == "error":
                    raise
                logger.warning("skipped: %s", exc)
                counts["skipped"] += 1
                continue
            counts["written"] += 1
    logger.info("cache %s: %d written, %d already there, %d skipped", folder, counts["written"],
                counts["existing"], counts["skipped"])
    return counts
