"""What every dataset produces: lists of :class:`Sample` per split, plus patient-grouped split helpers.

A dataset is a registered function ``cfg -> SplitSet``; it lists files and labels only (a few MB even
for the 112,120 NIH images) and never opens an image, so nothing is ever loaded into memory wholesale.
Patient-grouped splits matter: the same patient's images in train and test inflate AUROC.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image: its file, its float32 target ``[K]`` (0/1 per class) and its patient (or None)."""

    path: str
    target: np.ndarray
    patient: Optional[str] = None


@dataclass
class SplitSet:
    """The ``train``/``val``/``test`` sample lists of a dataset and facts worth recording with a run."""

    splits: Dict[str, List[Sample]]
    info: Dict[str, object] = field(default_factory=dict)


def make_target(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def check_unique(splits: Dict[str, List[Sample]], where: str) -> None:
    """Refuse an image listed twice, in one split or in two (a duplicate counts twice; across splits it leaks
    test images into training)."""
    seen: Dict[str, Tuple[str, str]] = {}
    for split in SPLITS:
        for s in splits.get(split, []):
            key = os.path.realpath(s.path)  # one file reached through a link or another folder name is one image
            if key in seen:
                first, name = seen[key]
                twice = f"twice in {split}" if first == split else f"in both {first} and {split}"
                also = "" if name == s.path else f" (also as {name})"
                raise DataError(f"{where} lists {s.path}{also} {twice}: each image must appear once")
            seen[key] = (split, s.path)


def check_classes(samples: Sequence[Sample], labels: Sequence[str], where: str) -> None:
    """Refuse a binary dataset (one output) whose images are all of one class (an empty ``Uninfected/``
    folder, a label column of all zeros): the model could be neither learned nor evaluated. In a multi-label
    dataset a class without positives is only logged (its AUROC is reported as null)."""
    if not samples:
        return
    y = np.stack([s.target for s in samples])
    for k, lab in enumerate(labels):
        col = y[:, k][~np.isnan(y[:, k])]
        for value, name in ((1.0, "positive"), (0.0, "negative")):
            if np.any(col == value):
                continue
            if len(labels) == 1:
                raise DataError(f"{where} has no {name} image for '{lab}' ({len(samples)} images): a binary "
                                f"model needs both classes to be learned or evaluated")
            logger.warning("%s has no %s image for class '%s': it cannot be learned (AUROC n/a)", where, name, lab)


def shuffled_patients(patients: Sequence[str], seed: int) -> List[str]:
    """Sorted unique patients in a seeded random order (independent of input order)."""
    uniq = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(uniq))
    return [uniq[i] for i in order]


def carve_patients(samples: Sequence[Sample], fraction: float, seed: int):
    """Split ``samples`` into ``(rest, carved)`` with ``ceil(fraction * patients)`` patients carved.

    Samples without a patient are their own group. Raises DataError when there are too few patients.
    """
    groups = [s.patient if s.patient is not None else f"#{s.path}" for s in samples]
    order = shuffled_patients(groups, seed)
    if len(order) < 2:
        raise DataError(f"cannot carve a patient-disjoint split from {len(order)} patient(s)")
    n = min(max(1, int(math.ceil(fraction * len(order)))), len(order) - 1)
    carved = set(order[:n])
    rest = [s for s, g in zip(samples, groups) if g not in carved]
    cut = [s for s, g in zip(samples, groups) if g in carved]
    return rest, cut


def random_patient_split(samples: Sequence[Sample], val_fraction: float, test_fraction: float,
                         seed: int) -> Dict[str, List[Sample]]:
    """Seeded, patient-grouped train/val/test split (fractions of patients)."""
    if test_fraction > 0:
        rest, test = carve_patients(samples, test_fraction, seed)
    else:
        rest, test = list(samples), []
    train, val = carve_patients(rest, val_fraction / max(1e-9, 1.0 - test_fraction), seed + 1)
    return {"train": train, "val": val, "test": test}


def stratified_patient_split(samples: Sequence[Sample], val_fraction: float, test_fraction: float,
                             seed: int) -> Dict[str, List[Sample]]:
    """Patient-grouped split that also keeps the positive rate of each split close (binary targets).

    Uses scikit-learn's ``StratifiedGroupKFold``: the test fold is one of ``round(1 / test_fraction)``
    folds, the validation fold one of ``round((1 - test_fraction) / val_fraction)`` folds of the rest,
    so the fractions are rounded to ``1/k``.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    def fold(items, fraction, rs):
        k = max(2, int(round(1.0 / fraction)))
        groups = [s.patient if s.patient is not None else f"#{s.path}" for s in items]
        if len(set(groups)) < k:
            raise DataError(f"cannot split {len(set(groups))} patients into {k} stratified folds; "
                            f"lower data.val_fraction/data.test_fraction or add data")
        y = [int(s.target[0] > 0.5) for s in items]
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=rs)
        keep, cut = next(splitter.split(np.zeros(len(items)), y, groups))
        return [items[i] for i in sorted(keep)], [items[i] for i in sorted(cut)]

    items = list(samples)
    if test_fraction > 0:
        items, test = fold(items, test_fraction, seed)
    else:
        test = []
    train, val = fold(items, val_fraction / (1.0 - test_fraction), seed + 1)
    return {"train": train, "val": val, "test": test}


def log_counts(splits: Dict[str, List[Sample]], labels: Sequence[str], name: str) -> Dict[str, dict]:
    """Log (and return) image, patient and per-class positive counts of every split."""
    out = {}
    for split in SPLITS:
        items = splits.get(split, [])
        pos = np.nansum([s.target for s in items], axis=0) if items else np.zeros(len(labels))
        patients = len({s.patient for s in items if s.patient is not None})
        out[split] = {"images": len(items), "patients": patients,
                      "positives": {lab: int(p) for lab, p in zip(labels, pos)}}
        logger.info("%s %s: %d images, %d patients; positives: %s", name, split, len(items), patients,
                    ", ".join(f"{lab} {int(p)}" for lab, p in zip(labels, pos)))
    return out
