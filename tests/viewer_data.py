"""Synthetic ``infer_cam.py`` output folders for the viewer tests: real records, mosaics and maps, no model."""

import json
import os

import cv2
import numpy as np
import yaml

from chexcam import viz
from chexcam.labels import CHESTXRAY14_LABELS, MALARIA_LABELS


def _image(rng, size, i):
    h, w = size
    img = rng.normal(90, 20, (h, w)).clip(0, 255).astype(np.uint8)
    cv2.circle(img, (w // 3 + 7 * i % (w // 3), h // 2), max(4, h // 8), 220, -1)
    return np.repeat(img[..., None], 3, axis=2)


def _maps(rng, k, h, w, i):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    maps = np.empty((k, h, w), np.float32)
    for c in range(k):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        maps[c] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.15 * max(h, w)) ** 2))
    maps[:, :2] = np.nan  # a strip outside the crop, as centre-cropped X-rays have
    return maps


def make_infer_folder(folder, n=10, labels=CHESTXRAY14_LABELS, size=(96, 80), npz_every=2, truth=True,
                      sort=False, seed=0, tile=64):
    """``n`` images: PNG originals in ``folder/src``, and in ``folder/cam`` what infer_cam.py writes per image
    (mosaic, JSON record, maps for every ``npz_every``-th image) plus config.yaml and summary.json.
    Returns ``(cam folder, probabilities [n, K], targets [n, K])``."""
    rng = np.random.default_rng(seed)
    labels = list(labels)
    k = len(labels)
    src, out = os.path.join(folder, "src"), os.path.join(folder, "cam")
    os.makedirs(src, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    probs = np.round(rng.uniform(0, 1, (n, k)), 4)
    targets = (rng.uniform(0, 1, (n, k)) < 0.3).astype(int)
    with open(os.path.join(out, "config.yaml"), "w") as fh:
        yaml.safe_dump({"model": {"name": "densenet_tiny"}, "infer": {"colormap": "jet", "alpha": 0.4, "tile": tile,
                                                                       "sort": sort, "threshold": 0.5}}, fh)
    for i in range(n):
        stem = f"img_{i:03d}" if i != 1 else "odd name #1"
        h, w = size
        img = _image(rng, size, i)
        path = os.path.join(src, stem + ".png")
        cv2.imwrite(path, img)
        maps = _maps(rng, k, h, w, i)
        boxes = [[[w * 0.3, h * 0.3, w * 0.6, h * 0.7]] if probs[i, c] >= 0.5 else [] for c in range(k)]
        order = list(np.argsort(-probs[i], kind="stable")) if sort else None
        titles = [f"{name}: {100 * p:.1f}%" for name, p in zip(labels, probs[i])]
        sheet = viz.mosaic(img, maps, titles, tile=tile, boxes=boxes, order=order)
        viz.save_png(os.path.join(out, stem + "_cam.png"), sheet)
        rec = {"image": os.path.abspath(path), "size": [w, h], "model": "densenet_tiny", "weights": None,
               "method": "cam", "classes": {}}
        if truth:
            rec["target"] = {name: int(t) for name, t in zip(labels, targets[i])}
        for c, name in enumerate(labels):
            rec["classes"][name] = {"probability": float(probs[i, c]), "positive": bool(probs[i, c] >= 0.5),
                                    "boxes": boxes[c], "box_scores": [0.9] * len(boxes[c]),
                                    "peak": [w * 0.45, h * 0.5]}
        with open(os.path.join(out, stem + ".json"), "w") as fh:
            json.dump(rec, fh)
        if npz_every and i % npz_every == 0:
            np.savez_compressed(os.path.join(out, stem + "_maps.npz"), maps=maps.astype(np.float16),
                                probs=probs[i].astype(np.float32), labels=np.array(labels))
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({"images": n, "skipped": 0}, fh)
    return out, probs, targets


def make_malaria_folder(folder, n=6, seed=1):
    return make_infer_folder(folder, n=n, labels=MALARIA_LABELS, size=(60, 64), npz_every=3, seed=seed, tile=64)
