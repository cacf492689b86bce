"""Paddle Inference: the predictor configuration and a runner for an exported model + CAM folder."""

from __future__ import annotations

import os
import threading
from typing import Tuple

import numpy as np
import paddle

from ..errors import ChexcamError, ConfigError
from .export import PARAMS_FILE, find_program, read_meta

PRECISIONS = ("fp32", "bf16")


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


class Predictor:
    """``Predictor(model_dir)(x) -> (probs [B, K], raw_maps [B, K, h, w])``, float32 numpy.

    Runs a folder written by ``tools/export.py`` (model + CAM graph) with Paddle Inference: the deployment
    runtime, no model code needed. ``x`` is a preprocessed ``[B, 3, H, W]`` batch (numpy or paddle tensor);
    maps are raw CAMs in logit units at the feature resolution (:func:`chexcam.postprocess.postprocess`
    does ReLU / upsampling / normalization). Thread-safe (one run at a time).
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
