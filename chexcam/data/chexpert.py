"""CheXpert (Irvin et al., AAAI 2019) in its released layout, and the label policy it shares with MIMIC-CXR.

Layout (``CheXpert-v1.0`` or ``CheXpert-v1.0-small``; ``data.root`` is that folder, or the folder
holding it)::

    CheXpert-v1.0-small/
      train.csv  valid.csv
      train/patient00001/study1/view1_frontal.jpg
      valid/patient64541/study1/view1_frontal.jpg

Both CSVs have the header ``Path,Sex,Age,Frontal/Lateral,AP/PA`` followed by the 14 observations of
:data:`chexcam.labels.CHEXPERT_LABELS`. ``Path`` is relative to the folder *above* the dataset folder
(``CheXpert-v1.0-small/train/...``); its first component is replaced by ``data.root`` so a renamed
folder still works. Each observation is ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain)
or blank (not mentioned in the report), turned into the float32 target by:

- ``data.uncertain``: ``ones`` (U-Ones: -1 -> 1), ``zeros`` (U-Zeros: -1 -> 0) or ``ignore``
  (U-Ignore: -1 -> NaN, left out of the loss by :mod:`chexcam.losses` and of every metric);
- ``data.blank``: ``zeros`` (the paper's choice: not mentioned = negative) or ``ignore`` (NaN).

``data.view``: ``all``, ``frontal`` / ``lateral`` (the ``Frontal/Lateral`` column), ``PA`` / ``AP`` (the
``AP/PA`` column; frontal images only). Splits (``data.split_mode``):

- ``official``: ``valid.csv`` (234 images of 200 patients, labelled by radiologists, no uncertain or
  blank labels) is the **test** split; validation is a seeded carve-out of ``data.val_fraction`` of the
  ``train.csv`` patients (``patientNNNNN`` folder), so no patient is in two splits;
- ``random_patient``: both CSVs pooled and split by patient (``data.val_fraction`` / ``data.test_fraction``).

Also here: the reading of CheXpert-style label values (:func:`label_values`) that MIMIC-CXR-JPG reuses,
and :func:`map_labels`, which pairs a model's classes with another dataset's labels through the
constants of :mod:`chexcam.labels` for cross-dataset evaluation.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError, environment, read_reason
from ..labels import (
    CHESTXRAY14_TO_CHEXPERT,
    CHESTXRAY14_UNPAIRED,
    CHEXPERT_LABELS,
    CHEXPERT_TO_CHESTXRAY14,
    CHEXPERT_UNPAIRED,
    DATASET_LABELS,
)
from ..registry import DATASETS
from .chestxray14 import _open_text
from .samples import Sample, SplitSet, carve_patients, random_patient_split

logger = logging.getLogger(__name__)

CSV_NAMES = ("train.csv", "valid.csv")
FOLDER_NAMES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
_PATIENT = re.compile(r"^patient\d+$")
_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": None}


# ---------------------------------------------------------------------------------------------
# label values and policies (shared with MIMIC-CXR-JPG)


def check_labels(labels: Sequence[str], dataset: str) -> None:
    """``data.labels`` must be CheXpert observation names; a ChestX-ray14 name gets its counterpart named."""
    for lab in labels:
        if lab not in CHEXPERT_LABELS:
            twin = CHESTXRAY14_TO_CHEXPERT.get(lab)
            hint = f" (ChestX-ray14's '{lab}' is '{twin}' here)" if twin else ""
            raise DataError(f"data.labels has {lab!r}, not a {dataset} observation{hint}; known: "
                            f"{', '.join(CHEXPERT_LABELS)} (or a preset: chexpert, chexpert_competition)")


def label_policy(cfg) -> Tuple[float, float]:
    """``(value for an uncertain label, value for a blank label)`` from ``data.uncertain`` / ``data.blank``."""
    uncertain = {"ones": 1.0, "zeros": 0.0, "ignore": math.nan}[cfg.data.uncertain]
    blank = {"zeros": 0.0, "ignore": math.nan}[cfg.data.blank]
    return uncertain, blank


class LabelReader:
    """Turns the observation columns of a CheXpert-style CSV row into a float32 target.

    Counts the uncertain (-1) and blank values it saw per label, for the log and the run's info.
    """

    def __init__(self, labels: Sequence[str], cfg):
        self.labels = list(labels)
        self.uncertain, self.blank = label_policy(cfg)
        self.counts = {lab: {"uncertain": 0, "blank": 0} for lab in self.labels}

    def __call__(self, row: Dict[str, str], path: str, line: int) -> np.ndarray:
        out = np.empty(len(self.labels), np.float32)
        for k, lab in enumerate(self.labels):
            text = (row.get(lab) or "").strip()
            if text not in _VALUES:
                raise DataError(f"{path} line {line}: column '{lab}' must be 1.0, 0.0, -1.0 or blank, got {text!r}")
            v = _VALUES[text]
            if v is None:
                self.counts[lab]["blank"] += 1
                v = self.blank
            elif v < 0:
                self.counts[lab]["uncertain"] += 1
                v = self.uncertain
            out[k] = v
        return out

    def log(self, name: str, cfg) -> None:
        logger.info("%s: uncertain (-1) labels -> %s, blank labels -> %s; uncertain/blank per label: %s", name,
                    cfg.data.uncertain, cfg.data.blank,
                    ", ".join(f"{lab} {c['uncertain']}/{c['blank']}" for lab, c in self.counts.items()))


def read_csv_rows(path: str, required: Sequence[str], what: str):
    """``(line number, row dict)`` of a CSV (``.gz`` too), after checking its header has ``required``."""
    try:
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path} is not {what}: missing column(s) {', '.join(missing)}")
            for line, row in enumerate(reader, 2):
                yield line, row
    except (OSError, EOFError, gzip.BadGzipFile, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {read_reason(exc)}", exit_code=environment(exc)) from None


def warn_if_missing(splits: Dict[str, List[Sample]], root: Optional[str], on_bad_image: str) -> None:
    """Check the first image of each split only (stat-ing 200k-400k files is slow on network disks)."""
    for split, items in splits.items():
        if items and not os.path.isfile(items[0].path):
            logger.warning("%s image %s is not on disk: is data.root=%s right? (data.on_bad_image=%s decides)",
                           split, items[0].path, root, on_bad_image)
            return


# ---------------------------------------------------------------------------------------------
# cross-dataset label map


def map_labels(model_labels: Sequence[str], dataset: str) -> Tuple[List[Tuple[int, str, str]], Dict[str, str]]:
    """Pair a model's classes with ``dataset``'s labels for evaluation across datasets.

    Returns ``(pairs, skipped)``: ``pairs`` lists ``(head index, model class, dataset label)`` for every
    class that is a label of ``dataset`` or has a counterpart there through
    :data:`chexcam.labels.CHESTXRAY14_TO_CHEXPERT`; ``skipped`` maps the other model classes to the
    reason. A dataset without a known vocabulary (``csv``, ``malaria``) pairs every class with itself.
    """
    vocab = DATASET_LABELS.get(dataset)
    pairs: List[Tuple[int, str, str]] = []
    skipped: Dict[str, str] = {}
    for k, lab in enumerate(model_labels):
        if vocab is None or lab in vocab:
            pairs.append((k, lab, lab))
            continue
        twin = CHESTXRAY14_TO_CHEXPERT.get(lab) if dataset != "chestxray14" else CHEXPERT_TO_CHESTXRAY14.get(lab)
        if twin is not None and twin in vocab:
            pairs.append((k, lab, twin))
        else:
            skipped[lab] = (CHESTXRAY14_UNPAIRED.get(lab) or CHEXPERT_UNPAIRED.get(lab)
                            or f"not a {dataset} label and not in the label map of chexcam.labels")
    return pairs, skipped


# ---------------------------------------------------------------------------------------------
# the dataset


def find_root(root: Optional[str]) -> str:
    """The folder holding ``train.csv`` and ``valid.csv``: ``data.root`` or its ``CheXpert-v1.0[-small]``."""
    if not root:
        raise DataError("data.root is not set: point it at the CheXpert-v1.0-small (or CheXpert-v1.0) folder")
    for d in [root] + [os.path.join(root, n) for n in FOLDER_NAMES]:
        if all(os.path.isfile(os.path.join(d, n)) for n in CSV_NAMES):
            return d
    raise DataError(f"no train.csv and valid.csv under data.root={root} (nor in its {' or '.join(FOLDER_NAMES)} "
                    f"folder); point data.root at the CheXpert folder")


def image_path(root: str, rel: str) -> str:
    """``Path`` column -> file: its first component (the released folder name) becomes ``root``."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p]
    if parts and parts[0] not in ("train", "valid"):
        parts = parts[1:]
    return os.path.join(root, *parts)


def _keep_view(view: str, frontal_lateral: str, ap_pa: str) -> bool:
    if view == "all":
        return True
    if view in ("frontal", "lateral"):
        return frontal_lateral.strip().lower() == view
    return ap_pa.strip().upper() == view


def read_chexpert_csv(path: str, root: str, labels: Sequence[str], cfg, reader: LabelReader) -> List[Sample]:
    """Samples of one CheXpert CSV that pass ``data.view``, targets under the uncertain/blank policy."""
    need = ["Path", "Frontal/Lateral", "AP/PA"] + list(labels)
    out = []
    for line, row in read_csv_rows(path, need, "a CheXpert label file"):
        rel = (row["Path"] or "").strip()
        if not rel:
            raise DataError(f"{path} line {line}: empty Path")
        if not _keep_view(cfg.data.view, row["Frontal/Lateral"] or "", row["AP/PA"] or ""):
            continue
        patient = next((p for p in rel.split("/") if _PATIENT.match(p)), None)
        if patient is None:
            raise DataError(f"{path} line {line}: Path {rel!r} has no patientNNNNN folder")
        out.append(Sample(image_path(root, rel), reader(row, path, line), patient))
    return out


@DATASETS.register("chexpert")
def chexpert(cfg) -> SplitSet:
    """Build CheXpert's train/val/test sample lists as ``data.split_mode`` says (see the module doc)."""
    labels = list(cfg.data.labels)
    check_labels(labels, "CheXpert")
    root = find_root(cfg.data.root)
    reader = LabelReader(labels, cfg)
    train_csv, valid_csv = (os.path.join(root, n) for n in CSV_NAMES)
    train_rows = read_chexpert_csv(train_csv, root, labels, cfg, reader)
    valid_rows = read_chexpert_csv(valid_csv, root, labels, cfg, reader)
    mode = cfg.data.split_mode
    if mode == "official":
        train, val = carve_patients(train_rows, cfg.data.val_fraction, cfg.seed)
        splits = {"train": train, "val": val, "test": valid_rows}
    elif mode == "random_patient":
        splits = random_patient_split(train_rows + valid_rows, cfg.data.val_fraction, cfg.data.test_fraction,
                                      cfg.seed)
    else:
        raise DataError(f"data.split_mode={mode} is not a CheXpert split; use official or random_patient")
    reader.log("CheXpert", cfg)
    warn_if_missing(splits, root, cfg.data.on_bad_image)
    info = {"split_mode": mode, "view": cfg.data.view, "labels_file": train_csv,
            "labels_release": os.path.basename(os.path.normpath(root)), "uncertain": cfg.data.uncertain,
            "blank": cfg.data.blank, "label_value_counts": reader.counts}
    return SplitSet(splits, info)
