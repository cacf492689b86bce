"""Serving with Paddle Inference: exported model + CAM graphs, and the fast CPU path behind ``explain``.

Three entry points:

* :class:`PredictorExplainer` -- ``PredictorExplainer(model_dir)(x) -> (probs, raw_maps)`` for a folder
  written by ``tools/export.py`` (oneDNN on CPU, optional bf16; GPU with an optional TensorRT switch).
* :func:`make_predictor_explainer` -- the per-batch explainer of ``infer.engine: paddle_inference``: the
  same call contract as ``explain(model, x, ...)`` with the config's ``cam`` options.
* :func:`fast_cam` -- what ``chexcam.explain(..., method="cam")`` uses on CPU: the model and its CAM
  exported once into a cache folder and run by a cached oneDNN predictor (about 3x the dynamic graph),
  re-exported whenever the weights change. ``CHEXCAM_FAST_CAM=0`` (or :func:`set_fast_cam`) turns it off.

Weights changes are detected by a fingerprint of every parameter and buffer (CRC32 of the raw bytes,
read without a copy; ~10 ms for DenseNet121): paddle's in-place version counters do not move on
``set_value``/``set_state_dict`` or optimizer steps, so they cannot be trusted for this.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import weakref
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import paddle
from paddle import nn

from .errors import ChexcamError, ConfigError
from .export import PARAMS_FILE, export_model, find_program, read_meta
from .utils import has_gpu
from .weights import structure_signature, weights_fingerprint  # noqa: F401  (public here too)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
#: environment switch of the fast CAM path: 0/false/off/no disables it
FAST_CAM_ENV = "CHEXCAM_FAST_CAM"
#: where exported graphs are cached (default ``~/.cache/chexcam/graphs``)
CACHE_ENV = "CHEXCAM_CACHE_DIR"
#: exported graphs kept in the cache folder (oldest use removed first; ~30 MB each for DenseNet121)
CACHE_KEEP = 4
#: after this many different weight states on one model object, explain stays on the dynamic graph
#: for it (weights changing between every call, e.g. explain inside a training loop: re-exporting costs more)
MAX_WEIGHT_STATES = 4


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cpu_has_bf16() -> bool:
    """Whether the CPU reports bf16 matrix instructions (AVX512-BF16 or AMX) in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


# ---------------------------------------------------------------------------------------------
# predictor


def predictor_config(model_dir: str, device: str = "cpu", threads: int = 0, mkldnn: bool = True,
                     precision: str = "fp32", tensorrt: bool = False, gpu_memory_mb: int = 512):
    """A ``paddle.inference.Config`` for an exported folder.

    Args:
        model_dir: folder with ``model.json`` (or ``model.pdmodel``) and ``model.pdiparams``.
        device: ``cpu`` or ``gpu``.
        threads: CPU math threads (0: every CPU of this process).
        mkldnn: oneDNN kernels on CPU (conv+BN+ReLU fusion; about 3x paddle's dynamic graph).
        precision: ``fp32`` or ``bf16`` (oneDNN bf16 on CPU, TensorRT half precision on GPU); lossy.
        tensorrt: run supported subgraphs with TensorRT on GPU (needs paddle-gpu built with TensorRT).
    """
    from paddle import inference

    program = find_program(model_dir)
    if program is None or not os.path.isfile(os.path.join(model_dir, PARAMS_FILE)):
        raise ChexcamError(f"no exported model in {model_dir} (expected model.json and {PARAMS_FILE}; "
                           "run tools/export.py)")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; expected one of {', '.join(PRECISIONS)}")
    config = inference.Config(program, os.path.join(model_dir, PARAMS_FILE))
    config.disable_glog_info()
    if device == "gpu":
        config.enable_use_gpu(gpu_memory_mb, 0)
        if tensorrt:
            prec = inference.PrecisionType.Half if precision == "bf16" else inference.PrecisionType.Float32
            config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=64, min_subgraph_size=3,
                                          precision_mode=prec, use_static=False, use_calib_mode=False)
            config.set_trt_dynamic_shape_info({"x": [1, 3, 64, 64]}, {"x": [64, 3, 1024, 1024]},
                                              {"x": [8, 3, 224, 224]})
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads or cpu_count())
        if mkldnn:
            (config.enable_onednn if hasattr(config, "enable_onednn") else config.enable_mkldnn)()
            if hasattr(config, "set_onednn_cache_capacity"):
                config.set_onednn_cache_capacity(8)  # input shapes kept compiled (bounds memory)
            elif hasattr(config, "set_mkldnn_cache_capacity"):
                config.set_mkldnn_cache_capacity(8)
            if precision == "bf16":
                (config.enable_onednn_bfloat16 if hasattr(config, "enable_onednn_bfloat16")
                 else config.enable_mkldnn_bfloat16)()
    return config


class PredictorExplainer:
    """``PredictorExplainer(model_dir)(x) -> (probs [B, K], raw_maps [B, K, h, w])``, float32 numpy.

    Runs an exported model + CAM graph with Paddle Inference. ``x`` is a preprocessed ``[B, 3, H, W]``
    batch (numpy or paddle tensor); maps are raw CAMs in logit units at the feature resolution (use
    :func:`postprocess` for ReLU / upsampling / normalization). Thread-safe (one run at a time).
    """

    def __init__(self, model_dir: str, device: str = "cpu", threads: int = 0, mkldnn: bool = True,
                 precision: str = "fp32", tensorrt: bool = False):
        from paddle import inference

        if precision == "bf16" and device == "cpu" and not cpu_has_bf16():
            raise ChexcamError("precision bf16 on CPU needs AVX512-BF16 or AMX, which this CPU does not report "
                               "(/proc/cpuinfo); use precision fp32")
        self.model_dir = model_dir
        self.meta = read_meta(model_dir)
        self.device = device
        self.precision = precision
        self._config = predictor_config(model_dir, device, threads, mkldnn, precision, tensorrt)
        try:
            self._predictor = inference.create_predictor(self._config)
        except Exception as exc:
            raise ChexcamError(f"cannot load the exported model in {model_dir}: {type(exc).__name__}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._outputs = [self._predictor.get_output_handle(n) for n in self._predictor.get_output_names()]
        self.first_output = (self.meta.get("outputs") or ["probs"])[0]
        self.labels = list(self.meta.get("labels") or [])
        self._lock = threading.Lock()

    def run(self, x) -> Tuple[np.ndarray, np.ndarray]:
        """The graph's two outputs as stored (probabilities or logits, raw maps)."""
        if isinstance(x, paddle.Tensor):
            x = x.numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ChexcamError(f"expected a [B, 3, H, W] batch, got shape {list(x.shape)}")
        with self._lock:
            self._input.reshape(list(x.shape))
            self._input.copy_from_cpu(x)
            self._predictor.run()
            first, maps = (h.copy_to_cpu() for h in self._outputs[:2])
        return first.astype(np.float32, copy=False), maps.astype(np.float32, copy=False)

    def __call__(self, x) -> Tuple[np.ndarray, np.ndarray]:
        first, maps = self.run(x)
        if self.first_output == "logits":
            first = (1.0 / (1.0 + np.exp(-first.astype(np.float64)))).astype(np.float32)
        return first, maps


def postprocess(maps, size: Optional[Tuple[int, int]], normalize: Union[bool, str] = True,
                relu: bool = False) -> np.ndarray:
    """ReLU, bilinear upsampling to ``size`` (``None``: keep) and normalization of ``[B, K, h, w]`` raw maps.

    The same operations, in the same order and with the same epsilon, as :class:`chexcam.cam.BaseCAM`
    (half-pixel bilinear = paddle's ``align_corners=False``; a flat map becomes zeros), done with OpenCV
    and in-place numpy: about 10x faster than the paddle ops on 14 maps x 16 images at 224 px, equal to
    them within 1e-6.
    """
    from .cam.base import normalize_maps_np, normalize_mode

    mode = normalize_mode(normalize)
    m = np.asarray(maps.numpy() if isinstance(maps, paddle.Tensor) else maps, dtype=np.float32)
    owned = relu  # whether m is already a new array that may be overwritten
    if relu:
        m = np.maximum(m, 0.0)
    b, k, h, w = m.shape
    if size is not None and (h, w) != tuple(size):
        out_h, out_w = int(size[0]), int(size[1])
        flat = m.reshape(b * k, h, w)
        up = np.empty((b * k, out_h, out_w), dtype=np.float32)
        for i in range(b * k):
            cv2.resize(flat[i], (out_w, out_h), dst=up[i], interpolation=cv2.INTER_LINEAR)
        m, owned = up.reshape(b, k, out_h, out_w), True
    if mode == "none":
        return m if owned else m.copy()
    return normalize_maps_np(m, mode, inplace=owned)


# ---------------------------------------------------------------------------------------------
# export cache


def cache_root() -> str:
    """``$CHEXCAM_CACHE_DIR`` or ``~/.cache/chexcam``; a temporary folder when neither is writable."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "chexcam")
    try:
        os.makedirs(root, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    root = os.path.join(tempfile.gettempdir(), f"chexcam-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    os.makedirs(root, exist_ok=True)
    return root


def _prune(folder: str, keep: int) -> None:
    entries = [os.path.join(folder, d) for d in os.listdir(folder) if not d.startswith(".")]
    entries = [d for d in entries if os.path.isdir(d)]
    entries.sort(key=lambda d: os.path.getmtime(d), reverse=True)
    for stale in entries[keep:]:
        shutil.rmtree(stale, ignore_errors=True)


def cached_export(model: nn.Layer, output: str = "logits", fingerprint: Optional[str] = None) -> str:
    """Export ``model`` + CAM into the cache (once per weights and structure); returns the folder."""
    from . import __version__

    fp = fingerprint or weights_fingerprint(model)
    key = hashlib.sha256(f"{fp}|{output}|{paddle.__version__}|{__version__}".encode()).hexdigest()[:24]
    folder = os.path.join(cache_root(), "graphs")
    target = os.path.join(folder, key)
    if find_program(target) is None or not os.path.isfile(os.path.join(target, PARAMS_FILE)):
        tmp = os.path.join(folder, f".{key}.tmp{os.getpid()}.{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            export_model(model, tmp, output=output, meta={"fingerprint": fp}, quiet=True)
            try:
                os.replace(tmp, target)
            except OSError:  # another process won the race and its export is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(folder, CACHE_KEEP)
        logger.info("model + CAM graph exported for Paddle Inference (cached in %s)", target)
    os.utime(target)
    return target


# ---------------------------------------------------------------------------------------------
# fast CAM path for chexcam.explain

_fast_override: Optional[bool] = None
_lock = threading.Lock()
_entries: "weakref.WeakKeyDictionary[nn.Layer, Dict[str, Any]]" = weakref.WeakKeyDictionary()


def set_fast_cam(enabled: Optional[bool]) -> None:
    """Turn the fast CAM path on or off for this process (``None``: follow ``$CHEXCAM_FAST_CAM``)."""
    global _fast_override
    _fast_override = enabled


def fast_cam_enabled() -> bool:
    """Whether ``explain(method="cam")`` may use the cached Paddle Inference predictor."""
    if _fast_override is not None:
        return _fast_override
    return os.environ.get(FAST_CAM_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def clear_fast_cam_cache() -> None:
    """Drop every cached predictor (the exported folders on disk stay, see :func:`cache_root`)."""
    with _lock:
        _entries.clear()


def _ineligible(model: nn.Layer, x, layer: Optional[str], check_training: bool = True) -> Optional[str]:
    """Why the fast path cannot serve this call, or ``None`` when it can."""
    from .models.classifier import GapLinearClassifier

    if not isinstance(model, GapLinearClassifier) or not isinstance(getattr(model, "head", None), nn.Linear):
        return "not a chexcam GAP + Linear classifier"
    for attr in ("forward", "forward_features", "forward_head"):
        if getattr(type(model), attr) is not getattr(GapLinearClassifier, attr):
            return f"{type(model).__name__} overrides {attr}"
    if layer is not None and layer != model.cam_layer:
        return f"layer '{layer}' is not the model's cam_layer"
    if not paddle.in_dynamic_mode():
        return "static graph mode"
    if isinstance(x, paddle.Tensor) and not x.place.is_cpu_place():
        return "input not on the CPU"
    if not str(paddle.get_device()).startswith("cpu") or has_gpu():
        return "a GPU is in use (the dynamic graph is fast there)"
    for lyr in [model, *model.sublayers()]:
        if lyr._forward_pre_hooks or lyr._forward_post_hooks:
            return "the model has forward hooks (they would not run in an exported graph)"
        if check_training and lyr.training:
            return "the model is in training mode"
    return None


def _verify(model: nn.Layer, explainer: PredictorExplainer) -> Optional[str]:
    """Compare the exported graph with the dynamic graph on a small input; the reason if they differ."""
    from .cam.cam import CAM

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    probs, maps = CAM(model)(x, normalize=False, upsample=False)  # the dynamic graph, hooks and all
    got_logits, got_maps = explainer.run(x)
    got_probs = 1.0 / (1.0 + np.exp(-got_logits.astype(np.float64)))
    err = max(float(np.abs(got_probs - probs).max()),
              float(np.abs(got_maps - maps).max()) / max(float(np.abs(maps).max()), 1e-6))
    return None if err < 1e-4 else f"exported graph differs from the dynamic graph (relative error {err:.1e})"


def _run_fast(model: nn.Layer, x, layer: Optional[str], check_training: bool) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Logits and raw maps of all classes from the cached predictor of ``model``'s weights, or ``None``."""
    if not fast_cam_enabled():
        return None
    why = _ineligible(model, x, layer, check_training)
    if why is not None:
        logger.debug("fast CAM path not used: %s", why)
        return None
    with _lock:
        entry = _entries.setdefault(model, {"fingerprint": None, "explainer": None, "states": 0, "off": None})
    if entry["off"]:
        return None
    fp = weights_fingerprint(model)
    if fp != entry["fingerprint"] or entry["explainer"] is None:
        entry["states"] += 1
        entry["explainer"], entry["fingerprint"] = None, fp
        if entry["states"] > MAX_WEIGHT_STATES:
            entry["off"] = "weights change between calls"
            logger.info("fast CAM path off for this model: its weights changed %d times; using the dynamic graph",
                        MAX_WEIGHT_STATES)
            return None
        try:
            explainer = PredictorExplainer(cached_export(model, "logits", fp))
            reason = _verify(model, explainer) if entry["states"] == 1 else None
        except Exception as exc:  # Paddle Inference missing or broken: stay correct, just slower
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if reason:
            entry["off"] = reason
            logger.warning("fast CAM path unavailable (%s); using the dynamic graph", reason)
            return None
        entry["explainer"] = explainer
    try:
        return entry["explainer"].run(x)
    except Exception as exc:
        logger.debug("fast CAM run failed (%s); falling back to the dynamic graph", exc)
        return None


def fast_cam(model: nn.Layer, x, classes: Optional[Sequence[int]] = None,
             layer: Optional[str] = None) -> Optional[Tuple[paddle.Tensor, paddle.Tensor]]:
    """Logits ``[B, K]`` and raw CAMs ``[B, K', h, w]`` from a cached Paddle Inference predictor, or ``None``.

    ``None`` means "use the dynamic graph": fast path disabled, not on CPU, not a chexcam GAP + Linear
    model, a non-default ``layer``, hooks on the model, a layer in training mode, Paddle Inference
    unavailable, or a run that failed (a bad input then raises its usual error on the dynamic path).
    The model and its CAM are exported once per weights state (see :func:`weights_fingerprint`) --
    including after ``set_value`` or loading new weights -- and the first export of a model object is
    checked against its dynamic graph.

    Args:
        model: a chexcam model in eval mode.
        x: ``[B, 3, H, W]`` float32 numpy array or CPU paddle tensor; any batch and size.
        classes: head indices to return maps for (``None``: all, in head order).
        layer: the layer asked for (``None``: the model's ``cam_layer``).
    """
    out = _run_fast(model, x, layer, check_training=True)
    if out is None:
        return None
    logits, maps = out
    if classes is not None and list(classes) != list(range(maps.shape[1])):
        maps = maps[:, list(classes)]
    return paddle.to_tensor(logits), paddle.to_tensor(np.ascontiguousarray(maps))


def fast_explain(model: nn.Layer, x, method: str = "cam", classes=None, normalize: Union[bool, str] = True,
                 upsample: Union[bool, Tuple[int, int]] = True, relu: bool = False,
                 layer: Optional[str] = None) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """:func:`chexcam.explain` for ``method="cam"`` on CPU through the cached predictor, or ``None``.

    Same arguments and results as ``explain`` (probabilities ``[B, K]`` and maps ``[B, K', H', W']``,
    float32 numpy; equal within 1e-5), computed in eval mode like ``explain``. Returns ``None`` whenever
    the dynamic graph must answer instead: another method or layer, hooks on the model, fast path off
    (``CHEXCAM_FAST_CAM=0``), or arguments the dynamic path will reject with its usual error.
    """
    from .cam.base import normalize_mode, resolve_classes

    if method != "cam" or not isinstance(x, (np.ndarray, paddle.Tensor)) or x.ndim != 4 or x.shape[1] != 3:
        return None
    if isinstance(x, np.ndarray) and x.dtype != np.float32 or isinstance(x, paddle.Tensor) and x.dtype != paddle.float32:
        return None
    try:
        mode = normalize_mode(normalize)
        idx = resolve_classes(classes, int(model.head.weight.shape[1]), getattr(model, "labels", None))
    except (ChexcamError, AttributeError):
        return None  # the dynamic path raises the proper error
    out = _run_fast(model, x, layer, check_training=False)
    if out is None:
        return None
    logits, maps = out
    if idx != list(range(maps.shape[1])):
        maps = maps[:, idx]
    size = None
    if upsample:
        size = tuple(x.shape[2:]) if upsample is True else tuple(upsample)
    probs = paddle.nn.functional.sigmoid(paddle.to_tensor(logits)).numpy().astype(np.float32)
    return probs, postprocess(maps, size, mode, relu)


# ---------------------------------------------------------------------------------------------
# infer.engine: paddle_inference


class ConfiguredExplainer:
    """``explainer(x, classes=None) -> (probs, maps)``: a :class:`PredictorExplainer` plus fixed options.

    The call contract of ``chexcam.explain(model, x, method="cam", normalize=..., upsample=..., relu=...)``.
    """

    def __init__(self, predictor: PredictorExplainer, normalize: Union[bool, str] = False,
                 upsample: Union[bool, Tuple[int, int]] = True, relu: bool = False,
                 labels: Optional[Sequence[str]] = None):
        self.predictor = predictor
        self.normalize, self.upsample, self.relu = normalize, upsample, relu
        self.labels = list(labels or predictor.labels)

    def __call__(self, x, classes=None) -> Tuple[np.ndarray, np.ndarray]:
        from .cam.base import resolve_classes

        if isinstance(x, paddle.Tensor):
            x = x.numpy()
        probs, maps = self.predictor(x)
        idx = resolve_classes(classes, probs.shape[1], self.labels)
        if idx != list(range(probs.shape[1])):
            maps = maps[:, idx]
        size = None
        if self.upsample:
            size = tuple(x.shape[2:]) if self.upsample is True else tuple(self.upsample)
        return probs, postprocess(maps, size, self.normalize, self.relu)


def make_predictor_explainer(cfg, model: Optional[nn.Layer] = None,
                             normalize: Union[bool, str] = False) -> Callable[..., Tuple[np.ndarray, np.ndarray]]:
    """The per-batch explainer for ``infer.engine: paddle_inference``.

    Same contract as the dynamic engine's explainer, ``explain(model, x, method="cam", normalize=False,
    upsample=cfg.cam.upsample, relu=cfg.cam.relu)``: probabilities and raw maps (ReLU per ``cam.relu``, at
    the input size unless ``cam.upsample`` is false), which the engine maps back and normalizes itself;
    pass ``normalize="minmax"``/``"global"`` for normalized maps instead.

    With ``model`` (already built and loaded, e.g. by the engine) it is exported into the cache once per
    weights state. Without it, ``export.dir`` is used when it holds an export whose labels match the
    config, else the model is built from the config and exported into the cache.

    Returns:
        :class:`ConfiguredExplainer`: ``explainer(x, classes=None) -> (probs [B, K], maps [B, K', H, W])``,
        float32 numpy.
    """
    if cfg.cam.method != "cam":
        raise ConfigError(f"infer.engine=paddle_inference serves cam.method=cam only, got '{cfg.cam.method}' "
                          "(use the dynamic engine for gradient methods)")
    device = cfg.device
    if device == "auto":
        device = "gpu" if has_gpu() else "cpu"
    ex = getattr(cfg, "export", None)
    opts = dict(threads=getattr(ex, "cpu_threads", 0), mkldnn=getattr(ex, "mkldnn", True),
                precision=getattr(ex, "precision", "fp32"), tensorrt=getattr(ex, "tensorrt", False))
    folder = getattr(ex, "dir", None) if model is None else None
    if folder and find_program(folder) is not None:
        meta = read_meta(folder)
        if meta.get("labels") and list(meta["labels"]) != list(cfg.data.labels):
            raise ConfigError(f"export.dir {folder} was exported for labels {meta['labels'][:3]}... which differ "
                              "from data.labels; re-export with tools/export.py")
    else:
        if cfg.cam.layer is not None:
            raise ConfigError("infer.engine=paddle_inference explains the model's cam_layer only; set cam.layer=null")
        if model is None:
            from . import build_model

            if not cfg.model.weights and not cfg.model.allow_random:
                raise ConfigError("no model.weights given (or -o model.allow_random=true for a demo)")
            model = build_model(cfg)
        folder = cached_export(model, "probs")
    predictor = PredictorExplainer(folder, device=device, **opts)
    return ConfiguredExplainer(predictor, normalize=normalize, upsample=cfg.cam.upsample, relu=cfg.cam.relu,
                               labels=list(cfg.data.labels))


__all__ = ["PredictorExplainer", "ConfiguredExplainer", "make_predictor_explainer", "fast_cam", "fast_explain",
           "set_fast_cam",
           "fast_cam_enabled", "clear_fast_cam_cache", "weights_fingerprint", "cached_export", "postprocess",
           "predictor_config", "cache_root"]
