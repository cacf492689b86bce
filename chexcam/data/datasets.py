"""The data interface the engines use: ``build_split(cfg, split) -> [Sample]`` and a paddle Dataset.

``build_split`` dispatches on ``data.dataset`` through :data:`chexcam.registry.DATASETS`
(``chestxray14``, ``chexpert``, ``mimic_cxr``, ``malaria``, ``csv``) and logs image and positive counts
per class and split.
:class:`ImageDataset` decodes one image per item (never the whole dataset) and, when an image is bad,
returns a zero tensor with ``ok = 0`` instead of raising inside a loader worker: the engine then
either stops with a one-line error naming the file (``data.on_bad_image: error``) or drops the item
and counts it (``skip``). Randomness is seeded per ``(seed, epoch, index)``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import paddle

from ..errors import BadImageError, DataError
from ..registry import DATASETS
from . import chestxray14, chexpert, csv_dataset, malaria, mimic_cxr  # noqa: F401  (register the datasets)
from .cache import cache_folder, cache_path
from .io import read_image
from .samples import SPLITS, Sample, SplitSet, log_counts
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
    d = cfg.data
    return (d.dataset, d.root, tuple(d.labels), d.metadata, d.split_mode, d.split_dir, d.view,
            d.val_fraction, d.test_fraction, d.csv, d.path_column, d.uncertain, d.blank, cfg.seed)


def build_splits(cfg) -> SplitSet:
    """All three splits of the configured dataset (listed once per process and data config)."""
    key = _memo_key(cfg)
    if key not in _MEMO:
        result = DATASETS.get(cfg.data.dataset)(cfg)
        if not result.splits.get("train"):
            raise DataError(f"dataset '{cfg.data.dataset}' has an empty train split (data.root={cfg.data.root})")
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
        return read_image(self.source(i))

    def error_of(self, i: int) -> str:
        """The one-line reason item ``i`` is bad (re-read in the calling process)."""
        try:
            self.load(i)
        except BadImageError as exc:
            return str(exc)
        return f"image could not be loaded: {self.samples[i].path}"

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            img = self.load(i)
        except BadImageError:
            return np.zeros(self.shape, np.float32), s.target, np.int64(i), np.float32(0.0)
        if self.train:
            x = self.transform(img, np.random.default_rng([self.seed, self.epoch, int(i)]))
        elif self.ten_crop:
            x = self.transform(img)
        else:
            x, _ = self.transform(img)
        return x.astype(np.float32, copy=False), s.target, np.int64(i), np.float32(1.0)


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


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                rank: int = 0, world: int = 1, max_batches: int = 0) -> Tuple[paddle.io.DataLoader, EpochBatchSampler]:
    """A ``paddle.io.DataLoader`` over ``dataset`` with :class:`EpochBatchSampler` (call its set_epoch)."""
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, rank, world, max_batches)
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=int(num_workers),
                                  return_list=True, use_shared_memory=False)
    return loader, sampler


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
    for x, y, idx, ok in loader:
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
