"""Device selection, seeding, atomic file writes and logging set-up shared by the library and the tools.

Imports paddle only inside the functions that need it, so config handling stays paddle-free.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import random
import re
from typing import Iterable, Iterator, List

import numpy as np

from .errors import ConfigError

logger = logging.getLogger(__name__)


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib), or ``""`` when none is close.

    The one "did you mean" of the package: config keys, registry names, layers and class labels use it.
    """
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f"; did you mean '{close[0]}'?" if close else ""


def nan_to_null(obj):
    """NaN floats in nested dicts/lists -> ``None``, so ``json.dump`` writes strict JSON (``null``, not ``NaN``)."""
    if isinstance(obj, dict):
        return {k: nan_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_null(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def has_gpu() -> bool:
    """Whether paddle was built with CUDA and sees a GPU."""
    import paddle

    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def set_device(device: str = "auto") -> str:
    """Select ``cpu`` / ``gpu`` (``auto``: GPU when paddle was built with CUDA and one is visible)."""
    import paddle

    gpu = has_gpu()
    if device == "auto":
        device = "gpu" if gpu else "cpu"
    if device == "gpu" and not gpu:
        raise ConfigError("device 'gpu' requested but this paddle has no CUDA device; use -o device=cpu")
    paddle.set_device(device)
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and paddle (CPU runs are then bit-for-bit repeatable)."""
    import paddle

    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)
    os.environ.setdefault("FLAGS_cudnn_deterministic", "1")


@contextlib.contextmanager
def atomic_path(path: str, fsync: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path`` in one rename.

    A crash or an exception never leaves a truncated ``path`` (the temporary file is removed); ``fsync``
    flushes the file to disk before the rename (checkpoints).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None:  # a failed write (disk full) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_TMP_SUFFIX = re.compile(r"\.tmp(\d+)$")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be writing (this process, or any live one: kept to be safe)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OSError, OverflowError):  # not a pid this system can have
        return False
    return True


def remove_stale_temps(folder: str, recursive: bool = False) -> List[str]:
    """Remove the ``*.tmp<pid>`` files :func:`atomic_path` left in ``folder`` when its writer was killed.

    Only files whose process no longer exists are removed (never one a live process may still be writing).
    Engines call this at the start of a run on the folders they write. Returns the removed paths.
    """
    if os.name == "nt" or not os.path.isdir(folder):  # os.kill(pid, 0) would terminate pid on Windows
        return []
    walk = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    removed = []
    for root, _, names in walk:
        for name in names:
            m = _TMP_SUFFIX.search(name)
            path = os.path.join(root, name)
            if m and (os.path.islink(path) or os.path.isfile(path)) and not _pid_alive(int(m.group(1))):
                try:
                    os.remove(path)
                except FileNotFoundError:  # another process removed it first
                    continue
                removed.append(path)
    if removed:
        logger.info("removed %d stale temporary file(s) of interrupted runs in %s", len(removed), folder)
    return removed


def setup_logging(level: int = logging.INFO, log_file: str | None = None) -> None:
    """Tools call this once; the library itself only uses ``logging.getLogger(__name__)``."""
    handlers = [logging.StreamHandler()]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)
