"""The data interface the engines use: ``build_split(cfg, split) -> [Sample]`` and a paddle Dataset.

``build_split`` dispatches on ``data.dataset`` through :data:`chexcam.registry.DATASETS`
(``chestxray14``, ``chexpert``, ``mimic_cxr``, ``malaria``, ``csv``) and logs image and positive counts
per class and split.
:class:`ImageDataset` decodes one image per item (never the whole dataset) and, when an image is bad
(any exception while reading or transforming it, a decoder's ``cv2.error`` included, or more pixels than
``data.max_pixels``), returns a zero tensor with ``ok = 0`` instead of raising inside a loader thread or
worker: the engine then either stops with a one-line error naming the file (``data.on_bad_image: error``)
or drops the item and counts it (``skip``). Anything else that goes wrong while loading is re-raised in the
main thread as one line (:func:`iterate`); no failure leaves the run waiting. Randomness is seeded per
``(seed, epoch, index)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import paddle
from tqdm import tqdm

from ..errors import BadImageError, ChexcamError, DataError
from ..registry import DATASETS
from ..utils import remove_stale_temps
from . import chestxray14, chexpert, csv_dataset, malaria, mimic_cxr  # noqa: F401  (register the datasets)
from .cache import cache_folder, cache_path, write_cached
from .io import read_image
from .samples import SPLITS, Sample, SplitSet, check_unique, log_counts
from .transforms import TenCrop, TrainTransform, eval_transform

logger = logging.getLogger(__name__)

# OpenCV prints its own multi-line decoder complaints on stderr for a corrupt PNG; read_image already
# turns every failure into a one-line BadImageError naming the file, so keep stderr to that one line.
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # pragma: no cover - very old OpenCV builds
    pass

_MEMO: Dict[tuple, SplitSet] = {}


def _memo_key(cfg) -> tuple:
    """The whole ``data`` section and the seed: any key that could change a listing changes the key."""
    return repr(dataclasses.asdict(cfg.data)), cfg.seed


def build_splits(cfg) -> SplitSet:
    """All three splits of the configured dataset (listed once per process and data config)."""
    key = _memo_key(cfg)
    if key not in _MEMO:
        result = DATASETS.get(cfg.data.dataset)(cfg)
        if not result.splits.get("train"):
            raise DataError(f"dataset '{cfg.data.dataset}' has an empty train split (data.root={cfg.data.root})")
        check_unique(result.splits, f"dataset '{cfg.data.dataset}'")
        result.info["counts"] = log_counts(result.splits, cfg.data.labels, cfg.data.dataset)
        _MEMO.clear()
        _MEMO[key] = result
    return _MEMO[key]


def build_split(cfg, split: str) -> List[Sample]:
    """Samples of ``split`` (``train``, ``val`` or ``test``) of the configured dataset.

    Each :class:`Sample` has ``path`` (str), ``target`` (float32 ``[K]``, 0/1 in ``data.labels`` order,
    NaN for a label to ignore: CheXpert/MIMIC-CXR uncertain or blank labels under ``ignore``)
    and ``patient`` (str or None). Splits are patient-disjoint and depend only on the config and seed.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")
    return build_splits(cfg).splits[split]


class ImageDataset(paddle.io.Dataset):
    """``__getitem__(i) -> (x float32, target float32 [K], index int64, ok float32)``.

    ``x`` is ``[3, crop, crop]`` (``[10, 3, crop, crop]`` with ``ten_crop``). Training items use
    :class:`TrainTransform` with a generator seeded by ``(seed, epoch, i)``; call :meth:`set_epoch`
    before iterating (workers are re-forked each epoch and copy it).
    """

    def __init__(self, samples: List[Sample], cfg, train: bool = False, ten_crop: bool = False):
        super().__init__()
        self.samples = list(samples)
        self.train, self.seed, self.epoch = bool(train), int(cfg.seed), 0
        if train:
            self.transform = TrainTransform.from_config(cfg)
        elif ten_crop:
            self.transform = TenCrop.from_config(cfg)
        else:
            self.transform = eval_transform(cfg)
        self.ten_crop = bool(ten_crop) and not train
        self.shape = ((10,) if self.ten_crop else ()) + (3, cfg.data.crop, cfg.data.crop)
        self.cache = cache_folder(cfg)
        self.num_classes = len(cfg.data.labels)
        self.max_pixels = int(cfg.data.max_pixels)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def source(self, i: int) -> str:
        """The file item ``i`` is read from: its cache entry when one exists, else the original."""
        path = self.samples[i].path
        if self.cache:
            cached = cache_path(self.cache, path)
            if os.path.isfile(cached):
                return cached
        return path

    def load(self, i: int) -> np.ndarray:
        return read_image(self.source(i), self.max_pixels)

    def _input(self, i: int) -> np.ndarray:
        img = self.load(i)
        if self.train:
            x = self.transform(img, np.random.default_rng([self.seed, self.epoch, int(i)]))
        elif self.ten_crop:
            x = self.transform(img)
        else:
            x, _ = self.transform(img)
        return x.astype(np.float32, copy=False)

    def error_of(self, i: int) -> str:
        """The one-line reason item ``i`` is bad (re-read in the calling process)."""
        path = self.samples[i].path
        try:
            self._input(i)
        except BadImageError as exc:  # the resize step's refusal does not know the file: name it
            msg = str(exc)
            return msg if path in msg else f"{path}: {msg}"
        except Exception as exc:
            return f"cannot read image {path}: {one_line(exc)}"
        return f"image could not be loaded: {path}"

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            x = self._input(i)
        except Exception:  # one item's failure, whatever raised it, is that item's: never the loader's
            return np.zeros(self.shape, np.float32), s.target, np.int64(i), np.float32(0.0)
        return x, s.target, np.int64(i), np.float32(1.0)


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line: the last line of a multi-line message (where OpenCV and
    paddle's worker re-raise put the cause), skipping paddle's ``[Hint: ...]`` and ``[TimeInfo...]`` lines."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("[")]
    text = lines[-1] if lines else ""
    name = type(exc).__name__
    return text if text.startswith(name + ":") else f"{name}: {text}" if text else name


class EpochBatchSampler:
    """Batches of indices, shuffled per epoch from ``(seed, epoch)``, sharded across ``world`` ranks.

    Like ``paddle.io.DistributedBatchSampler`` but seeded by the config: the index list is padded by
    wrapping to a multiple of ``world`` so every rank runs the same number of steps (the gradients are
    all-reduced each step). No batch is ever empty.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1,
                 max_batches: int = 0):
        if n < 1:
            raise DataError("cannot iterate over an empty split")
        self.n, self.batch_size, self.shuffle = n, int(batch_size), bool(shuffle)
        self.seed, self.rank, self.world, self.epoch = int(seed), int(rank), int(world), 0
        self.max_batches = int(max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> List[int]:
        idx = np.arange(self.n)
        if self.shuffle:
            idx = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n)
        if self.world > 1:
            total = int(math.ceil(self.n / self.world)) * self.world
            idx = np.concatenate([idx, idx[: total - self.n]]) if total > self.n else idx
            idx = idx[self.rank::self.world]
        return [int(i) for i in idx]

    def __iter__(self):
        idx = self.indices()
        batches = [idx[k:k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        if self.max_batches:
            batches = batches[: self.max_batches]
        return iter(batches)

    def __len__(self) -> int:
        per_rank = int(math.ceil(self.n / self.world))
        full = int(math.ceil(per_rank / self.batch_size))
        return min(full, self.max_batches) if self.max_batches else full


class ThreadLoader:
    """Batches of ``dataset`` read one step ahead by a thread of this process (``data.num_workers: 0``).

    Used instead of paddle's single-process ``DataLoader``, whose reader thread, when anything raises in it,
    dies and leaves the main thread waiting forever. Here whatever the thread raises is handed over and
    re-raised in the main thread, and a consumer that stops early stops the thread.
    """

    def __init__(self, dataset, batch_sampler, prefetch: int = 2):
        self.dataset, self.batch_sampler, self.prefetch = dataset, batch_sampler, int(prefetch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        q: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for batch in self.batch_sampler:
                    items = [self.dataset[i] for i in batch]
                    cols = [np.stack([np.asarray(item[k]) for item in items]) for k in range(len(items[0]))]
                    if not put(("batch", cols)):
                        return
                put(("end", None))
            except BaseException as exc:  # handed to the main thread, which re-raises it
                put(("error", exc))

        thread = threading.Thread(target=work, name="chexcam-loader", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    kind, value = q.get(timeout=1.0)
                except queue.Empty:
                    if not thread.is_alive() and q.empty():
                        raise RuntimeError("the loader thread ended without a result") from None
                    continue
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield [paddle.to_tensor(v) for v in value]
        finally:
            stop.set()
            thread.join()


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                rank: int = 0, world: int = 1, max_batches: int = 0) -> Tuple[object, EpochBatchSampler]:
    """Batches of ``dataset`` with :class:`EpochBatchSampler` (call its set_epoch): a :class:`ThreadLoader`
    without workers, else a ``paddle.io.DataLoader`` with ``num_workers`` processes."""
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, rank, world, max_batches)
    if int(num_workers) == 0:
        return ThreadLoader(dataset, sampler), sampler
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=int(num_workers),
                                  return_list=True, use_shared_memory=False)
    return loader, sampler


def _batches(loader):
    """The loader's batches; a failure of the loader itself (not of one image) becomes one line."""
    it = iter(loader)
    try:
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except ChexcamError:
                raise
            except Exception as exc:
                # paddle's workers outlive a failed iterator until it is collected, which a traceback
                # holding it delays to exit, where joining them hangs: stop them now
                shutdown = getattr(it, "_try_shutdown_all", None)
                if shutdown is not None:
                    shutdown()
                raise DataError(f"the data loader failed: {one_line(exc)}") from None
            yield batch
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def iterate(loader, sampler: EpochBatchSampler, dataset: ImageDataset, epoch: int, on_bad_image: str,
            skipped: Optional[Dict[str, str]] = None, yield_empty: bool = False):
    """Yield ``(x, y, indices)`` paddle/numpy batches with bad items handled as ``data.on_bad_image`` says.

    ``skipped`` (path -> reason) collects the bad files; under ``error`` the first one raises a
    :class:`BadImageError` whose one-line message names it. A batch whose items are all bad is dropped,
    or, with ``yield_empty`` (data-parallel training, where every rank must join every all-reduce),
    yielded unfiltered with an empty ``indices`` so the caller can take a zero-weighted step.
    """
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    for x, y, idx, ok in _batches(loader):
        okn = ok.numpy() > 0.5
        idxn = idx.numpy().astype(np.int64)
        if not okn.all():
            for i in idxn[~okn]:
                reason = dataset.error_of(int(i))
                if on_bad_image == "error":
                    raise BadImageError(reason)
                path = dataset.samples[int(i)].path
                if skipped is not None and path not in skipped:
                    logger.warning("skipped bad image: %s", reason)
                    skipped[path] = reason
            if not okn.any():
                if yield_empty:
                    yield x, y, idxn[:0]
                continue
            keep = paddle.to_tensor(np.nonzero(okn)[0])
            x, y, idxn = paddle.gather(x, keep), paddle.gather(y, keep), idxn[okn]
        yield x, y, idxn


def prepare_cache(cfg, splits=SPLITS) -> Dict[str, int]:
    """Fill the cache for the given splits; existing entries are kept. Returns counts.

    Bad images follow ``data.on_bad_image`` (``error``: stop naming the file; ``skip``: log and count).
    """
    folder = cache_folder(cfg)
    if folder is None:
        raise DataError("data.cache_dir is not set: pass -o data.cache_dir=FOLDER")
    remove_stale_temps(folder, recursive=True)
    counts = {"written": 0, "existing": 0, "skipped": 0}
    for split in splits:
        # progress on a terminal only: a log file or a pipe gets the summary line (and any error) alone
        for s in tqdm(build_split(cfg, split), desc=f"cache {split}", unit="img", disable=None):
            dst = cache_path(folder, s.path)
            if os.path.isfile(dst):
                counts["existing"] += 1
                continue
            try:
                write_cached(s.path, dst, cfg.data.resize, cfg.data.resize_mode, cfg.data.max_pixels)
            except BadImageError as exc:
                if cfg.data.on_bad_image == "error":
                    raise
                logger.warning("skipped: %s", exc)
                counts["skipped"] += 1
                continue
            counts["written"] += 1
    logger.info("cache %s: %d written, %d already there, %d skipped", folder, counts["written"],
                counts["existing"], counts["skipped"])
    return counts
