"""Export a chexcam model as one hook-free static graph: image batch -> (probabilities, CAMs of all classes).

The CAM is part of the graph (a matmul of the final feature map with the head weight), so a serving
runtime -- Paddle Inference with oneDNN or TensorRT, or ONNX Runtime through ``paddle2onnx`` -- needs no
hooks and no Python model code. Inputs are ``[B, 3, H, W]`` float32, already normalized as the config
says (``data.mean``/``data.std``); batch, height and width are dynamic.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from typing import Any, Dict, Optional, Sequence

import paddle
import paddle.nn.functional as F
from paddle import nn

from .errors import ChexcamError

logger = logging.getLogger(__name__)

#: files of an exported model folder (``model.json`` is paddle 3's PIR program, ``model.pdmodel`` paddle 2's)
PROGRAM_FILES = ("model.json", "model.pdmodel")
PARAMS_FILE = "model.pdiparams"
META_FILE = "chexcam_export.json"
OUTPUTS = ("probs", "logits")


class CamGraph(nn.Layer):
    r"""``x -> (sigmoid(logits) or logits, maps)`` with ``maps[b, k] = sum_c W[c, k] f[b, c]`` (raw CAM).

    ``f`` is the model's final feature map (``forward_features``: after the last norm + ReLU) and ``W``
    the head weight ``[C, K]``, exactly what :class:`chexcam.cam.CAM` computes with a hook; here it is
    a plain matmul in the forward pass, so the traced program holds both outputs.
    """

    def __init__(self, model: nn.Layer, output: str = "probs"):
        super().__init__()
        if output not in OUTPUTS:
            raise ChexcamError(f"unknown export output '{output}'; expected one of {', '.join(OUTPUTS)}")
        check_exportable(model)
        self.model = model
        self.output = output

    def forward(self, x: paddle.Tensor):
        feats = self.model.forward_features(x)
        logits = self.model.forward_head(feats)
        shape = paddle.shape(feats)
        # [K, C] x [B, C, h*w] -> [B, K, h*w]: one GEMM per image, no einsum (ONNX-friendly)
        flat = paddle.matmul(self.model.head.weight, paddle.flatten(feats, start_axis=2), transpose_x=True)
        maps = paddle.reshape(flat, [shape[0], -1, shape[2], shape[3]])
        return (F.sigmoid(logits) if self.output == "probs" else logits), maps


def check_exportable(model: nn.Layer) -> None:
    """A GAP + Linear model with ``forward_features``/``forward_head`` (every chexcam model); else an error."""
    missing = [a for a in ("forward_features", "forward_head") if not callable(getattr(model, a, None))]
    if missing or not isinstance(getattr(model, "head", None), nn.Linear):
        raise ChexcamError(f"{type(model).__name__} cannot be exported with its CAM: it needs forward_features, "
                           "forward_head and a Linear 'head' (a chexcam GAP + Linear classifier)")


def find_program(model_dir: str) -> Optional[str]:
    """The program file of an exported folder, or ``None``."""
    for name in PROGRAM_FILES:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            return path
    return None


def export_model(model: nn.Layer, out_dir: str, output: str = "probs", labels: Optional[Sequence[str]] = None,
                 meta: Optional[Dict[str, Any]] = None, quiet: bool = False) -> Dict[str, str]:
    """Trace ``model`` + CAM into ``out_dir`` (``model.json``/``model.pdiparams`` + ``chexcam_export.json``).

    The model is deep-copied first, so tracing never leaves anything on the caller's Layer. Files are
    written to a temporary folder and moved into place, so a crash leaves no half-written export.

    Args:
        model: a chexcam model (any GAP + Linear classifier with ``forward_features``/``forward_head``).
        out_dir: folder to (re)write.
        output: ``"probs"`` (sigmoid applied in the graph) or ``"logits"``.
        labels: class names stored in the metadata (default ``model.labels``).
        meta: extra JSON-able entries for ``chexcam_export.json`` (e.g. preprocessing).
        quiet: log at DEBUG instead of INFO (the internal cache of the fast CAM path).

    Returns:
        ``{"program": ..., "params": ..., "meta": ...}`` paths.
    """
    from paddle.static import InputSpec

    from . import __version__

    graph = CamGraph(copy.deepcopy(model), output=output)
    graph.eval()
    labels = list(labels if labels is not None else getattr(model, "labels", ()) or ())
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out_dir))}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        static = paddle.jit.to_static(graph, input_spec=[InputSpec([None, 3, None, None], "float32", "x")],
                                      full_graph=True)
        paddle.jit.save(static, os.path.join(tmp, "model"))
        info = {
            "chexcam_version": __version__,
            "paddle_version": paddle.__version__,
            "model": type(model).__name__,
            "num_classes": int(model.head.weight.shape[1]),
            "labels": labels,
            "outputs": [output, "maps"],
            "input": {"name": "x", "shape": [None, 3, None, None], "dtype": "float32"},
            "output_stride": int(getattr(model, "output_stride", 32)),
            **(meta or {}),
        }
        with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1)
        os.makedirs(out_dir, exist_ok=True)
        produced = set(os.listdir(tmp))
        for stale in set(PROGRAM_FILES) - produced:  # another paddle generation's program would shadow ours
            if os.path.exists(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
        for name in produced:
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    program = find_program(out_dir)
    logger.log(logging.DEBUG if quiet else logging.INFO, "exported %s + CAM (%s, maps) to %s",
               type(model).__name__, output, out_dir)
    return {"program": program, "params": os.path.join(out_dir, PARAMS_FILE),
            "meta": os.path.join(out_dir, META_FILE)}


def read_meta(model_dir: str) -> Dict[str, Any]:
    """``chexcam_export.json`` of an exported folder (``{}`` for a folder exported by other means)."""
    path = os.path.join(model_dir, META_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


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
    from .inference import PredictorExplainer

    ref = PredictorExplainer(model_dir).run(x)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # paddle2onnx leaves unused initializers that ORT warns about one by one
    sess = ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})
    err = max(float(abs(a - b).max()) for a, b in zip(ref, got))
    if err > atol:
        raise ChexcamError(f"{onnx_path} differs from the Paddle model by {err:.2e} (> {atol})")
    return err


def export_from_config(cfg) -> Dict[str, Any]:
    """Build the configured model, export it + CAM to ``export.dir`` (default ``output_dir/inference``),
    check the export against the dynamic graph on a random batch, and optionally write and check ONNX.

    Returns a summary dict (folder, files, max differences).
    """
    import numpy as np

    from . import build_model
    from .convert import sha256_of
    from .inference import PredictorExplainer

    if not cfg.model.weights and not cfg.model.allow_random:
        raise ChexcamError("no model.weights given: convert a checkpoint (pretrained/README.md) and pass "
                           "-o model.weights=PATH, or -o model.allow_random=true to export random weights")
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
    probs, _ = PredictorExplainer(out_dir, threads=cfg.export.cpu_threads, mkldnn=cfg.export.mkldnn)(x)
    summary = {"dir": os.path.abspath(out_dir), **files, "max_prob_diff": float(np.abs(probs - ref).max())}
    if summary["max_prob_diff"] > 1e-4:
        raise ChexcamError(f"exported model in {out_dir} disagrees with the dynamic graph "
                           f"(max probability difference {summary['max_prob_diff']:.2e})")
    if cfg.export.onnx:
        summary["onnx"] = export_onnx(out_dir, opset=cfg.export.onnx_opset)
        summary["onnx_max_diff"] = check_onnx(out_dir, summary["onnx"], x)
    return summary
