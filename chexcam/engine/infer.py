"""CAM inference over image files: mosaics and JSON records in ``output_dir``."""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import List

import numpy as np
from tqdm import tqdm

from .. import build_model, explain, viz
from ..config import Config, save_config
from ..data.io import read_image
from ..data.transforms import EvalTransform
from ..errors import BadImageError, ChexcamError
from ..utils import seed_everything, set_device

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_inputs(spec: str) -> List[str]:
    """One file, a folder (its images, sorted) or a glob pattern -> list of paths."""
    if os.path.isdir(spec):
        files = [os.path.join(spec, f) for f in sorted(os.listdir(spec)) if f.lower().endswith(IMAGE_EXTS)]
    elif any(ch in spec for ch in "*?["):
        files = sorted(glob.glob(spec, recursive=True))
    elif os.path.isfile(spec):
        files = [spec]
    else:
        raise ChexcamError(f"infer.input not found: {spec} (expected an image, a folder or a glob)")
    if not files:
        raise ChexcamError(f"infer.input {spec} matched no images ({', '.join(IMAGE_EXTS)})")
    return files


def check_weights(cfg: Config) -> None:
    if not cfg.model.weights and not cfg.model.allow_random:
        raise ChexcamError(
            "no model.weights given: convert the public CheXNet checkpoint as pretrained/README.md shows and "
            "pass -o model.weights=PATH, or -o model.allow_random=true for a demo with random weights"
        )


def run(cfg: Config) -> dict:
    """Explain every input image; returns a summary dict (counts and output folder)."""
    if not cfg.infer.input:
        raise ChexcamError("infer.input is not set: pass -o infer.input=IMAGE|FOLDER|GLOB")
    check_weights(cfg)
    set_device(cfg.device)
    seed_everything(cfg.seed)
    files = list_inputs(cfg.infer.input)
    os.makedirs(cfg.output_dir, exist_ok=True)
    save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    model = build_model(cfg)
    if not cfg.model.weights:
        logger.warning("model.allow_random=true: random weights, the maps and probabilities are meaningless")
    tf = EvalTransform.from_config(cfg)
    labels = list(cfg.data.labels)
    done, bad = 0, []
    for path in tqdm(files, desc="infer", unit="img"):
        try:
            img = read_image(path)
        except BadImageError as exc:
            logger.warning("skipped: %s", exc)
            bad.append(str(exc))
            continue
        x, geo = tf(img)
        probs, maps = explain(model, x[None], method=cfg.cam.method, normalize=cfg.cam.normalize,
                              relu=cfg.cam.relu, layer=cfg.cam.layer)
        full = geo.map_to_original(maps[0], fill=np.nan)
        stem = os.path.splitext(os.path.basename(path))[0]
        titles = [f"{name}: {100 * p:.1f}%" for name, p in zip(labels, probs[0])]
        sheet = viz.mosaic(img, full, titles, colormap=cfg.infer.colormap, alpha=cfg.infer.alpha)
        viz.save_png(os.path.join(cfg.output_dir, f"{stem}_cam.png"), sheet)
        record = {
            "image": os.path.abspath(path),
            "size": [int(img.shape[1]), int(img.shape[0])],
            "classes": {
                name: {"probability": float(p), "positive": bool(p >= cfg.infer.threshold)}
                for name, p in zip(labels, probs[0])
            },
        }
        with open(os.path.join(cfg.output_dir, f"{stem}.json"), "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1)
        done += 1
    summary = {"images": done, "skipped": len(bad), "output_dir": os.path.abspath(cfg.output_dir)}
    logger.info("wrote %d mosaics and JSON records to %s (%d skipped)", done, summary["output_dir"], len(bad))
    return summary
