"""ONNX: convert an exported folder with ``paddle2onnx`` and check it against Paddle Inference (``[onnx]`` extra)."""

from __future__ import annotations

import logging
import os
from typing import Optional

from ..errors import ChexcamError
from .export import PARAMS_FILE, find_program
from .predictor import Predictor

logger = logging.getLogger(__name__)


def export_onnx(model_dir: str, onnx_path: Optional[str] = None, opset: int = 13) -> str:
    """Convert an exported folder to ONNX with ``paddle2onnx`` (the ``[onnx]`` extra); returns the path."""
    try:
        import paddle2onnx
    except ImportError:
        raise ChexcamError("ONNX export needs paddle2onnx: pip install 'chexcam[onnx]'") from None
    program = find_program(model_dir)
    if program is None:
        raise ChexcamError(f"no exported model in {model_dir} (run tools/export.py first)")
    onnx_path = onnx_path or os.path.join(model_dir, "model.onnx")
    paddle2onnx.export(program, os.path.join(model_dir, PARAMS_FILE), save_file=onnx_path, opset_version=opset)
    logger.info("wrote %s (opset %d)", onnx_path, opset)
    return onnx_path


def check_onnx(model_dir: str, onnx_path: str, x, atol: float = 1e-4) -> float:
    """Max abs difference between ONNX Runtime and Paddle Inference on ``x``; ChexcamError above ``atol``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ChexcamError("checking the ONNX model needs onnxruntime: pip install 'chexcam[onnx]'") from None
    ref = Predictor(model_dir).run(x)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # paddle2onnx leaves unused initializers that ORT warns about one by one
    sess = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    err = max(float(abs(a - b).max()) for a, b in zip(ref, got))
    if err > atol:
        raise ChexcamError(f"{onnx_path} differs from the Paddle model by {err:.2e} (> {atol})")
    return err
