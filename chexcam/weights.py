"""Load and save chexcam checkpoints (``.pdparams``), with one-line errors for ones that do not fit.

Every weights file is read by :mod:`chexcam.serialization`, never by ``paddle.load`` or ``torch.load``: its
pickle may name only numpy arrays and plain containers, so loading a file cannot run code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from typing import Any, Dict, Optional, Tuple

import numpy as np
import paddle
from paddle import nn

from . import serialization
from .errors import WeightsError
from .utils import atomic_path

logger = logging.getLogger(__name__)


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Read a ``.pdparams`` file, a plain state dict or a chexcam checkpoint dict, without unpickling code.

    Tensors come back as numpy arrays, which ``Layer.set_state_dict`` and ``Optimizer.set_state_dict``
    accept as they are. A PyTorch checkpoint is read just as safely (so a malicious one is refused by name),
    then refused: it must be converted once with ``tools/convert_weights.py``.
    """
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path} (see pretrained/README.md)")
    kind, obj = serialization.load(path)
    if kind == "torch":
        raise WeightsError(f"{path} is a PyTorch checkpoint, not chexcam weights: convert it once with "
                           f"python tools/convert_weights.py -c CONFIG --src {path} --out OUT.pdparams "
                           "(see pretrained/README.md)")
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file {path} does not hold a dict of parameters (got {type(obj).__name__})")
    return obj


def state_dict_of(obj: Dict[str, Any]) -> Dict[str, Any]:
    """The parameter dict of a checkpoint (``model`` entry) or of a plain state dict."""
    if "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    return obj


def load_weights(model: nn.Layer, path: str, strict: bool = True) -> Dict[str, Any]:
    """Load parameters into ``model``; missing, unexpected, mis-shaped or mistyped keys and non-finite values
    (NaN or inf: every probability and map would be NaN) are a WeightsError.

    Returns the whole checkpoint dict (so callers can read ``config``, ``epoch``...).
    """
    ckpt = read_checkpoint(path)
    state = state_dict_of(ckpt)
    own, missing = check_fits(model, state, path, strict)
    bad = [k for k in own if k in state and np.asarray(state[k]).dtype.kind == "f" and not np.isfinite(state[k]).all()]
    if bad:
        raise WeightsError(f"weights {path} hold non-finite weights (NaN or inf) in {len(bad)} tensor(s), e.g. "
                           f"{bad[0]}: the model cannot be used")
    model.set_state_dict({k: v for k, v in state.items() if k in own})
    logger.info("loaded weights from %s (%d tensors)", path, len(own) - len(missing))
    return ckpt


def check_fits(model: nn.Layer, state: Dict[str, Any], path: str, strict: bool = True):
    """Raise a one-line WeightsError when ``state`` does not fit ``model`` (shapes; with ``strict``, keys).

    Returns ``(model.state_dict(), missing keys)``.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis = [
        f"{k} {list(getattr(state[k], 'shape', []))} vs model {list(own[k].shape)}"
        for k in own
        if k in state and list(getattr(state[k], "shape", [])) != list(own[k].shape)
    ]
    if mis:
        raise WeightsError(f"weights {path} do not fit the model: shape mismatch at {'; '.join(mis[:3])}"
                           + (f" and {len(mis) - 3} more" if len(mis) > 3 else ""))
    types = [f"{k} is {_dtype_name(state[k])}, the model's {_dtype_name(own[k])}" for k in own
             if k in state and _dtype_name(state[k]) != _dtype_name(own[k])]
    if types:  # paddle would fail on them with an assertion (float64, int8...) or a ValueError (uint64)
        raise WeightsError(f"weights {path} do not fit the model: another dtype at {'; '.join(types[:3])}"
                           + (f" and {len(types) - 3} more" if len(types) > 3 else "")
                           + "; convert them to the model's dtype")
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"weights {path} do not fit the model: {'; '.join(parts)}")
    return own, missing


def _dtype_name(value: Any) -> str:
    """``float32``, ``int64``...: the element type of a numpy array or a paddle tensor (``?`` without one)."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return type(value).__name__
    if isinstance(dtype, np.dtype):
        return dtype.name
    return str(dtype).replace("paddle.", "")


def save_atomic(obj: Any, path: str) -> str:
    """``paddle.save`` to a temporary file, then rename: a crash never leaves a truncated checkpoint."""
    with atomic_path(path, fsync=True) as tmp:
        paddle.save(obj, tmp)
    return path


def checkpoint_config(ckpt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The resolved config stored inside a checkpoint, if any."""
    cfg = ckpt.get("config")
    return cfg if isinstance(cfg, dict) else None


def structure_signature(model: nn.Layer) -> Tuple:
    """The parts of a model that shape its graph but not its parameters (layer types, output stride...)."""
    return (type(model).__module__, type(model).__qualname__, getattr(model, "cam_layer", None),
            int(getattr(model, "output_stride", 0) or 0),
            tuple((name, type(layer).__name__) for name, layer in model.named_sublayers()))


def _raw_view(t: paddle.Tensor) -> np.ndarray:
    try:
        return np.from_dlpack(t.detach())  # zero-copy on CPU
    except Exception:
        return np.ascontiguousarray(t.numpy())


def weights_fingerprint(model: nn.Layer) -> str:
    """Hex digest of the model's structure and the exact bytes of every parameter and buffer.

    CRC32 per tensor (zlib's SIMD implementation, ~3 GB/s) over zero-copy views, then one sha256 of
    the names, shapes, dtypes and CRCs: any change of a value changes it (barring a 2**-32 CRC collision
    of that tensor).
    """
    h = hashlib.sha256(repr(structure_signature(model)).encode())
    for name, t in model.state_dict().items():
        arr = _raw_view(t)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.shape}|{arr.dtype}|{zlib.crc32(arr) if arr.size else 0}\n".encode())
    return h.hexdigest()
