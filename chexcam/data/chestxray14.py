"""NIH ChestX-ray14 in its own layout: PNGs under ``data.root`` and the NIH label and split files.

Images: ``root/images/*.png`` (flat) or ``root/images_0NN/images/*.png`` (the folders the NIH archives
unpack to). Labels: ``Data_Entry_2017.csv``, its ``.gz``, or the 2020 re-release
``Data_Entry_2017_v2020.csv[.gz]`` (which one is recorded with every run, since some labels differ).
"No Finding" is all zeros. Split modes (``data.split_mode``):

- ``official``: NIH's ``train_val_list.txt`` / ``test_list.txt`` (86,524 / 25,596 images), with a seeded,
  patient-grouped validation carve-out of ``data.val_fraction`` of the train_val patients;
- ``chexnet``: the public CheXNet reproductions' ``{train,val,test}_list.txt`` (image name and 14 0/1
  labels in CheXNet order), labels taken from those lists;
- ``random_patient``: seeded, grouped by Patient ID, ``data.val_fraction`` / ``data.test_fraction``.

A listed image that is not on disk stays in the split (its path points where it would be) so that
``data.on_bad_image`` decides what happens; a warning counts them up front.

The label file is checked, not trusted: a finding name outside the 14 (and "No Finding"), e.g. a misspelled
one, and an image listed twice are one-line errors naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import EXIT_ENVIRONMENT, DataError, environment, read_reason
from ..labels import CHESTXRAY14_LABELS
from ..registry import DATASETS
from ..utils import did_you_mean
from .io import read_list
from .samples import Sample, SplitSet, carve_patients, random_patient_split

logger = logging.getLogger(__name__)

METADATA_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017.csv.gz",
                  "Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz")
NO_FINDING = "No Finding"


def _search_dirs(root: Optional[str]) -> List[str]:
    if not root:
        return []
    return [root, os.path.join(root, "metadata")]


def find_metadata(cfg) -> str:
    """``data.metadata``, else the first of :data:`METADATA_NAMES` under ``root`` or ``root/metadata``."""
    if cfg.data.metadata:
        if not os.path.isfile(cfg.data.metadata):
            raise DataError(f"data.metadata not found: {cfg.data.metadata}")
        return cfg.data.metadata
    for d in _search_dirs(cfg.data.root):
        for name in METADATA_NAMES:
            if os.path.isfile(os.path.join(d, name)):
                return os.path.join(d, name)
    raise DataError(f"no label file ({' / '.join(METADATA_NAMES)}) under data.root={cfg.data.root} or its "
                    f"metadata/ folder; set data.metadata=PATH")


def _open_text(path: str):
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def patient_id(text: str) -> str:
    """``"00000001"`` (2017 file) and ``"1"`` (v2020 file) are the same patient."""
    text = text.strip()
    return str(int(text)) if text.isdigit() else text


def read_metadata(path: str) -> Dict[str, dict]:
    """``Image Index`` -> ``{"findings": [...], "patient": str, "view": str}`` for every row.

    The last file read is kept (keyed by path, size and mtime): train, eval and tests list splits of
    the same 112,120-row file several times per process. Callers must not modify the result.
    """
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if _META_CACHE.get("key") != key:
        _META_CACHE.clear()
        _META_CACHE["rows"] = _read_metadata(path)
        _META_CACHE["key"] = key
    return _META_CACHE["rows"]


_META_CACHE: Dict[str, object] = {}


def _read_metadata(path: str) -> Dict[str, dict]:
    rows: Dict[str, dict] = {}
    try:
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            need = ("Image Index", "Finding Labels", "Patient ID", "View Position")
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path} is not an NIH Data_Entry file: missing column(s) {', '.join(missing)}")
            known = set(CHESTXRAY14_LABELS) | {NO_FINDING}
            lines: Dict[str, int] = {}
            for row in reader:
                findings = [f.strip() for f in (row["Finding Labels"] or "").split("|") if f.strip()]
                name = (row["Image Index"] or "").strip()
                unknown = [f for f in findings if f not in known]
                if unknown or not findings:
                    what = f"unknown finding {unknown[0]!r}{did_you_mean(unknown[0], known)}" if unknown \
                        else "empty 'Finding Labels' (expected findings or 'No Finding')"
                    raise DataError(f"{path} line {reader.line_num}: {what}")
                if not name:
                    raise DataError(f"{path} line {reader.line_num}: empty 'Image Index'")
                if name in rows:
                    raise DataError(f"{path} line {reader.line_num}: {name} is listed again (first on line "
                                    f"{lines[name]}); each image must appear once")
                lines[name] = reader.line_num
                rows[name] = {"findings": findings, "patient": patient_id(row["Patient ID"] or ""),
                              "view": (row["View Position"] or "").strip()}
    except (OSError, EOFError, gzip.BadGzipFile, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read label file {path}: {read_reason(exc)}", exit_code=environment(exc)) from None
    if not rows:
        raise DataError(f"label file {path} has no rows")
    return rows


def index_images(root: Optional[str]) -> Dict[str, str]:
    """Image name -> path for ``root/images/``, ``root/images_*/images/`` and ``root`` itself."""
    found: Dict[str, str] = {}
    if not root or not os.path.isdir(root):
        return found
    dirs = [os.path.join(root, "images"), root]
    for entry in sorted(os.listdir(root)):
        if entry.startswith("images_"):
            dirs.append(os.path.join(root, entry, "images"))
            dirs.append(os.path.join(root, entry))
    for d in dirs:
        if os.path.isdir(d):
            for e in os.scandir(d):
                if e.name.lower().endswith(".png") and e.name not in found:
                    found[e.name] = e.path
    return found


def find_split_dir(cfg, names: Sequence[str], extra: Iterable[str] = ()) -> str:
    dirs = [cfg.data.split_dir] if cfg.data.split_dir else list(extra) + _search_dirs(cfg.data.root)
    for d in dirs:
        if d and all(os.path.isfile(os.path.join(d, n)) for n in names):
            return d
    where = cfg.data.split_dir or f"data.root={cfg.data.root} (or its metadata/ folder)"
    raise DataError(f"split lists {', '.join(names)} not found in {where}; set data.split_dir=FOLDER")


def _check_labels(labels: Sequence[str]) -> List[int]:
    unknown = [lab for lab in labels if lab not in CHESTXRAY14_LABELS]
    if unknown:
        raise DataError(f"data.labels has {', '.join(map(repr, unknown))}, not a ChestX-ray14 finding"
                        f"{did_you_mean(unknown[0], CHESTXRAY14_LABELS)} (known: {', '.join(CHESTXRAY14_LABELS)})")
    return [CHESTXRAY14_LABELS.index(lab) for lab in labels]


def _samples(items: Sequence[tuple], labels: Sequence[str], paths: Dict[str, str], default_dir: str) -> List[Sample]:
    """``(name, findings, patient)`` triples -> Samples; targets are rows of one float32 matrix.

    "No Finding" (and any finding not in ``labels``) leaves the row at zeros.
    """
    col = {lab: k for k, lab in enumerate(labels)}
    y = np.zeros((len(items), len(labels)), np.float32)
    for i, (_, findings, _) in enumerate(items):
        for f in findings:
            k = col.get(f)
            if k is not None:
                y[i, k] = 1.0
    prefix = default_dir + os.sep
    return [Sample(paths.get(name) or prefix + name, y[i], patient) for i, (name, _, patient) in enumerate(items)]


@DATASETS.register("chestxray14")
def chestxray14(cfg) -> SplitSet:
    """Build the train/val/test sample lists of ChestX-ray14 as ``data.split_mode`` says."""
    labels = list(cfg.data.labels)
    cols = _check_labels(labels)
    mode, seed = cfg.data.split_mode, cfg.seed
    paths = index_images(cfg.data.root)
    default_dir = os.path.join(cfg.data.root or ".", "images")
    info: Dict[str, object] = {"split_mode": mode, "view": cfg.data.view}
    meta: Optional[Dict[str, dict]] = None
    if mode != "chexnet" or cfg.data.view != "all" or cfg.data.metadata:
        meta_path = find_metadata(cfg)
        meta = read_metadata(meta_path)
        info["labels_file"] = meta_path
        info["labels_release"] = "v2020" if "v2020" in os.path.basename(meta_path) else "2017"
        logger.info("ChestX-ray14 labels: %s (%s release, %d rows)", meta_path, info["labels_release"], len(meta))

    def keep_view(name: str) -> bool:
        return cfg.data.view == "all" or (meta is not None and meta.get(name, {}).get("view") == cfg.data.view)

    def from_meta(names: Iterable[str], listed_in: str) -> List[Sample]:
        items = []
        for name in names:
            row = meta.get(name)
            if row is None:
                raise DataError(f"{name} (listed in {listed_in}) is not in the label file {info['labels_file']}")
            if keep_view(name):
                items.append((name, row["findings"], row["patient"]))
        return _samples(items, labels, paths, default_dir)

    if mode == "official":
        d = find_split_dir(cfg, ("train_val_list.txt", "test_list.txt"))
        train_val = from_meta(read_list(os.path.join(d, "train_val_list.txt"), what="split list"), "train_val_list.txt")
        test = from_meta(read_list(os.path.join(d, "test_list.txt"), what="split list"), "test_list.txt")
        train, val = carve_patients(train_val, cfg.data.val_fraction, seed)
        splits = {"train": train, "val": val, "test": test}
        info["split_dir"] = d
    elif mode == "chexnet":
        root = cfg.data.root or "."
        d = find_split_dir(cfg, ("train_list.txt", "val_list.txt", "test_list.txt"),
                           extra=(os.path.join(root, "chexnet_split"), os.path.join(root, "metadata", "chexnet_split")))
        splits = {}
        for split in ("train", "val", "test"):
            path = os.path.join(d, f"{split}_list.txt")
            items = []
            try:
                with open(path, encoding="utf-8") as fh:
                    for ln_no, line in enumerate(fh, 1):
                        parts = line.split()
                        if not parts:
                            continue
                        if len(parts) != 1 + len(CHESTXRAY14_LABELS) or any(p not in ("0", "1") for p in parts[1:]):
                            raise DataError(f"{path} line {ln_no}: expected an image name and 14 0/1 labels")
                        name = parts[0]
                        if not keep_view(name):
                            continue
                        findings = [CHESTXRAY14_LABELS[i] for i in cols if parts[1 + i] == "1"]
                        items.append((name, findings, patient_id(name.split("_")[0])))
            except (OSError, UnicodeDecodeError) as exc:
                reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror or exc
                raise DataError(f"cannot read split list {path}: {reason}", exit_code=EXIT_ENVIRONMENT) from None
            splits[split] = _samples(items, labels, paths, default_dir)
        info["split_dir"] = d
        info.setdefault("labels_file", d)
        info.setdefault("labels_release", "chexnet lists")
    else:
        every = from_meta(sorted(meta), "the label file")
        splits = random_patient_split(every, cfg.data.val_fraction, cfg.data.test_fraction, seed)
    listed = sum(len(v) for v in splits.values())
    on_disk = sum(1 for v in splits.values() for s in v if os.path.basename(s.path) in paths)
    info["images_on_disk"] = on_disk
    if on_disk < listed:
        logger.warning("%d of %d listed images are not under data.root=%s (data.on_bad_image=%s decides)",
                       listed - on_disk, listed, cfg.data.root, cfg.data.on_bad_image)
    return SplitSet(splits, info)
