"""``tools/export.py``: the configured model + CAMs of all classes as one static graph for Paddle Inference,
checked against the dynamic graph, optionally converted to ONNX and checked again."""

from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np
import paddle
import paddle.nn.functional as F

from ..convert import sha256_of
from ..errors import ChexcamError
from ..models import build_model, require_weights
from ..serving import Predictor, export_model
from ..serving.onnx import check_onnx, export_onnx


def export_from_config(cfg) -> Dict[str, Any]:
    """Build the configured model, export it + CAM to ``export.dir`` (default ``output_dir/inference``),
    check the export against the dynamic graph on a random batch, and optionally write and check ONNX.

    Returns a summary dict (folder, files, max differences).
    """
    require_weights(cfg)
    model = build_model(cfg)
    out_dir = cfg.export.dir or os.path.join(cfg.output_dir, "inference")
    meta = {"weights": os.path.abspath(cfg.model.weights) if cfg.model.weights else None,
            "weights_sha256": sha256_of(cfg.model.weights) if cfg.model.weights else None,
            "preprocess": {"resize": cfg.data.resize, "crop": cfg.data.crop, "mean": list(cfg.data.mean),
                           "std": list(cfg.data.std)}}
    files = export_model(model, out_dir, output="probs", labels=list(cfg.data.labels), meta=meta)
    x = np.random.default_rng(0).standard_normal((2, 3, cfg.data.crop, cfg.data.crop)).astype(np.float32)
    with paddle.no_grad():
        ref = F.sigmoid(model(paddle.to_tensor(x))).numpy()
    probs, _ = Predictor(out_dir, threads=cfg.export.cpu_threads, mkldnn=cfg.export.mkldnn)(x)
    summary = {"dir": os.path.abspath(out_dir), **files, "max_prob_diff": float(np.abs(probs - ref).max())}
    if summary["max_prob_diff"] > 1e-4:
        raise ChexcamError(f"exported model in {out_dir} disagrees with the dynamic graph "
                           f"(max probability difference {summary['max_prob_diff']:.2e})")
    if cfg.export.onnx:
        summary["onnx"] = export_onnx(out_dir, opset=cfg.export.onnx_opset)
        summary["onnx_max_diff"] = check_onnx(out_dir, summary["onnx"], x)
    return summary
