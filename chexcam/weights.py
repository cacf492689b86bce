"""Load and save chexcam checkpoints (``.pdparams``), with one-line errors for ones that do not fit."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import paddle
from paddle import nn

from .errors import WeightsError

logger = logging.getLogger(__name__)


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Read a ``.pdparams`` file: either a plain state dict or a chexcam checkpoint dict."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path} (see pretrained/README.md)")
    try:
        obj = paddle.load(path)
    except Exception as exc:  # paddle raises many types for a bad file
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file {path} does not hold a dict of parameters")
    return obj


def state_dict_of(obj: Dict[str, Any]) -> Dict[str, Any]:
    """The parameter dict of a checkpoint (``model`` entry) or of a plain state dict."""
    if "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    return obj


def load_weights(model: nn.Layer, path: str, strict: bool = True) -> Dict[str, Any]:
    """Load parameters into ``model``; missing, unexpected or mis-shaped keys are a WeightsError.

    Returns the whole checkpoint dict (so callers can read ``config``, ``epoch``...).
    """
    ckpt = read_checkpoint(path)
    state = state_dict_of(ckpt)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis = [
        f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own
        if k in state and list(getattr(state[k], "shape", [])) != list(own[k].shape)
    ]
    if mis:
        raise WeightsError(f"weights {path} do not fit the model: shape mismatch at {'; '.join(mis[:3])}"
                           + (f" and {len(mis) - 3} more" if len(mis) > 3 else ""))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"weights {path} do not fit the model: {'; '.join(parts)}")
    model.set_state_dict({k: v for k, v in state.items() if k in own})
    logger.info("loaded weights from %s (%d tensors)", path, len(own) - len(missing))
    return ckpt


def save_atomic(obj: Any, path: str) -> str:
    """``paddle.save`` to a temporary file, then rename: a crash never leaves a truncated checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        paddle.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def checkpoint_config(ckpt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The resolved config stored inside a checkpoint, if any."""
    cfg = ckpt.get("config")
    return cfg if isinstance(cfg, dict) else None
