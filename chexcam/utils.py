"""Device selection, seeding and logging set-up shared by the engine and the tools."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import paddle

from .errors import ConfigError

logger = logging.getLogger(__name__)


def set_device(device: str = "auto") -> str:
    """Select ``cpu`` / ``gpu`` (``auto``: GPU when paddle was built with CUDA and one is visible)."""
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device == "auto":
        device = "gpu" if has_gpu else "cpu"
    if device == "gpu" and not has_gpu:
        raise ConfigError("device 'gpu' requested but this paddle has no CUDA device; use -o device=cpu")
    paddle.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and paddle (CPU runs are then bit-for-bit repeatable)."""
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
    os.environ.setdefault("FLAGS_cudnn_deterministic", "1")


def setup_logging(level: int = logging.INFO, log_file: str | None = None) -> None:
    """Tools call this once; the library itself only uses ``logging.getLogger(__name__)``."""
    handlers = [logging.StreamHandler()]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)
