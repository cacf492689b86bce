"""MIMIC-CXR-JPG (Johnson et al. 2019; PhysioNet, v2.0.0 and v2.1.0) in its released layout.

``data.root`` is the version folder (``physionet.org/files/mimic-cxr-jpg/2.0.0/``)::

    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id,subject_id,study_id,PerformedProcedureStepDescription,
                                      ViewPosition,Rows,Columns,...   (one row per image)
    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id,study_id + the 14 CheXpert observations (per study)
    mimic-cxr-2.0.0-negbio.csv.gz     the same columns from the NegBio labeler
    mimic-cxr-2.0.0-split.csv.gz      dicom_id,study_id,subject_id,split (train / validate / test)
    files/p10/p10000032/s50414267/<dicom_id>.jpg

(uncompressed ``.csv`` files work too). Labels come from ``data.metadata`` when set (e.g. the NegBio
file), else from the CheXpert-labeler file, else the NegBio one; every image of a study gets the study's
labels. The values (1.0 / 0.0 / -1.0 / blank) follow ``data.uncertain`` and ``data.blank`` exactly as
for CheXpert (:mod:`chexcam.data.chexpert`). Images of studies missing from the label file are left
out (counted in the log and the run's info).

``data.view`` filters on ``ViewPosition``: ``PA``, ``AP``, ``frontal`` (PA or AP), ``lateral``
(LATERAL or LL) or ``all`` (also the rarer AP AXIAL, LAO, ... and blank positions). Splits
(``data.split_mode``): ``official`` uses the published split file (validate -> val), which is
patient-grouped by construction; ``random_patient`` ignores it and splits by ``subject_id`` (seeded).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

from ..errors import DataError
from ..registry import DATASETS
from .chexpert import LabelReader, check_labels, read_csv_rows, warn_if_missing
from .samples import SPLITS, Sample, SplitSet, random_patient_split

logger = logging.getLogger(__name__)

PREFIX = "mimic-cxr-2.0.0-"
FRONTAL, LATERAL = ("PA", "AP"), ("LATERAL", "LL")
_SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}


def _find(root: str, stem: str) -> Optional[str]:
    for name in (f"{PREFIX}{stem}.csv.gz", f"{PREFIX}{stem}.csv"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _need(root: str, stem: str) -> str:
    path = _find(root, stem)
    if path is None:
        raise DataError(f"no {PREFIX}{stem}.csv(.gz) under data.root={root}; point data.root at the "
                        f"mimic-cxr-jpg/<version> folder")
    return path


def label_file(cfg, root: str) -> str:
    """``data.metadata``, else the CheXpert-labeler file, else the NegBio one."""
    if cfg.data.metadata:
        if not os.path.isfile(cfg.data.metadata):
            raise DataError(f"data.metadata not found: {cfg.data.metadata}")
        return cfg.data.metadata
    path = _find(root, "chexpert") or _find(root, "negbio")
    if path is None:
        raise DataError(f"no {PREFIX}chexpert.csv(.gz) or {PREFIX}negbio.csv(.gz) under data.root={root}; "
                        f"set data.metadata=PATH")
    return path


def image_path(root: str, subject: str, study: str, dicom: str) -> str:
    """``files/p10/p10000032/s50414267/<dicom_id>.jpg`` under ``root``."""
    return os.path.join(root, "files", f"p{subject[:2]}", f"p{subject}", f"s{study}", f"{dicom}.jpg")


def _keep_view(view: str, position: str) -> bool:
    if view == "all":
        return True
    position = position.strip().upper()
    if view == "frontal":
        return position in FRONTAL
    if view == "lateral":
        return position in LATERAL
    return position == view


def _ids(row: Dict[str, str], path: str, line: int, *cols: str) -> Tuple[str, ...]:
    out = tuple((row[c] or "").strip() for c in cols)
    if not all(out):
        raise DataError(f"{path} line {line}: empty {' / '.join(c for c, v in zip(cols, out) if not v)}")
    return out


@DATASETS.register("mimic_cxr")
def mimic_cxr(cfg) -> SplitSet:
    """Build MIMIC-CXR-JPG's train/val/test sample lists as ``data.split_mode`` says (see the module doc)."""
    labels = list(cfg.data.labels)
    check_labels(labels, "MIMIC-CXR")
    root = cfg.data.root
    if not root or not os.path.isdir(root):
        raise DataError(f"data.root={root} is not a folder: point it at the mimic-cxr-jpg/<version> folder")
    mode = cfg.data.split_mode
    if mode not in ("official", "random_patient"):
        raise DataError(f"data.split_mode={mode} is not a MIMIC-CXR split; use official or random_patient")
    meta_path, labels_path = _need(root, "metadata"), label_file(cfg, root)
    reader = LabelReader(labels, cfg)
    study_targets = {}
    for line, row in read_csv_rows(labels_path, ["subject_id", "study_id"] + labels, "a MIMIC-CXR label file"):
        study_targets[_ids(row, labels_path, line, "subject_id", "study_id")] = reader(row, labels_path, line)
    split_of: Dict[str, str] = {}
    if mode == "official":
        split_path = _need(root, "split")
        for line, row in read_csv_rows(split_path, ["dicom_id", "split"], "a MIMIC-CXR split file"):
            name = (row["split"] or "").strip().lower()
            if name not in _SPLIT_NAMES:
                raise DataError(f"{split_path} line {line}: split must be train, validate or test, got {name!r}")
            split_of[_ids(row, split_path, line, "dicom_id")[0]] = _SPLIT_NAMES[name]
    samples: List[Tuple[Sample, Optional[str]]] = []
    unlabelled = unsplit = 0
    for line, row in read_csv_rows(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"],
                                   "a MIMIC-CXR metadata file"):
        if not _keep_view(cfg.data.view, row["ViewPosition"] or ""):
            continue
        dicom, subject, study = _ids(row, meta_path, line, "dicom_id", "subject_id", "study_id")
        target = study_targets.get((subject, study))
        if target is None:
            unlabelled += 1
            continue
        split = split_of.get(dicom) if mode == "official" else None
        if mode == "official" and split is None:
            unsplit += 1
            continue
        samples.append((Sample(image_path(root, subject, study, dicom), target, subject), split))
    if unlabelled or unsplit:
        logger.warning("MIMIC-CXR: %d image(s) of studies without labels in %s and %d image(s) without a row "
                       "in the split file left out", unlabelled, os.path.basename(labels_path), unsplit)
    if mode == "official":
        splits = {s: [smp for smp, sp in samples if sp == s] for s in SPLITS}
    else:
        splits = random_patient_split([smp for smp, _ in samples], cfg.data.val_fraction, cfg.data.test_fraction,
                                      cfg.seed)
    reader.log("MIMIC-CXR", cfg)
    warn_if_missing(splits, root, cfg.data.on_bad_image)
    labeler = "negbio" if "negbio" in os.path.basename(labels_path) else "chexpert"
    info = {"split_mode": mode, "view": cfg.data.view, "labels_file": labels_path, "metadata_file": meta_path,
            "labels_release": f"MIMIC-CXR-JPG ({labeler} labeler)", "uncertain": cfg.data.uncertain,
            "blank": cfg.data.blank, "unlabelled_images": unlabelled, "images_without_split": unsplit,
            "label_value_counts": reader.counts}
    return SplitSet(splits, info)
