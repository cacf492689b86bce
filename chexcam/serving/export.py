"""Export a chexcam model as one hook-free static graph: image batch -> (probabilities or logits, CAMs).

The CAM is part of the graph (:class:`chexcam.cam.graph.CamGraph`), so a serving runtime -- Paddle Inference
with oneDNN or TensorRT, or ONNX Runtime through ``paddle2onnx`` -- needs no hooks and no Python model
code. Inputs are ``[B, 3, H, W]`` float32, already normalized as the config says (``data.mean``/``data.std``);
batch, height and width are dynamic.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from typing import Any, Dict, Optional, Sequence

import paddle
from paddle import nn

from ..cam.graph import CamGraph
from ..errors import ChexcamError
from ..version import __version__

logger = logging.getLogger(__name__)

#: files of an exported model folder (``model.json`` is paddle 3's PIR program, ``model.pdmodel`` paddle 2's)
PROGRAM_FILES = ("model.json", "model.pdmodel")
PARAMS_FILE = "model.pdiparams"
META_FILE = "chexcam_export.json"


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
    written to a temporary folder beside ``out_dir`` and moved into place, so a crash leaves no half-written
    export.

    Args:
        model: a chexcam model (see :func:`chexcam.cam.graph.export_blocker` for what can be exported).
        out_dir: folder to (re)write.
        output: ``"probs"`` (sigmoid applied in the graph) or ``"logits"``.
        labels: class names stored in the metadata (default ``model.labels``).
        meta: extra JSON-able entries for ``chexcam_export.json`` (e.g. preprocessing).
        quiet: log at DEBUG instead of INFO.

    Returns:
        ``{"program": ..., "params": ..., "meta": ...}`` paths.
    """
    from paddle.static import InputSpec

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
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise ChexcamError(f"cannot read {path}: {exc}") from None
