"""Users' own data: a CSV with an image-path column and one 0/1 column per label in ``data.labels``.

Paths are relative to the CSV's folder (absolute paths work too). Optional columns: ``patient`` (the
split is grouped by it; without it each row is its own group) and ``split`` (``train``/``val``/``test``;
when present it is used as is instead of a seeded random split). One label column makes a binary task.
"""

from __future__ import annotations

import csv
import os

from ..errors import DataError
from ..registry import DATASETS
from .samples import SPLITS, Sample, SplitSet, make_target, random_patient_split


def _value(text: str, path: str, row: int, col: str) -> float:
    t = (text or "").strip().lower()
    if t in ("1", "1.0", "true", "yes"):
        return 1.0
    if t in ("0", "0.0", "false", "no", ""):
        return 0.0
    raise DataError(f"{path} row {row}: column '{col}' must be 0 or 1, got {text!r}")


@DATASETS.register("csv")
def csv_dataset(cfg) -> SplitSet:
    """Read ``data.csv`` (columns ``data.path_column`` + ``data.labels``, optional ``patient``/``split``)."""
    path = cfg.data.csv
    if not path:
        raise DataError("data.csv is not set: the csv dataset needs a CSV of image paths and label columns")
    if not os.path.isfile(path):
        raise DataError(f"data.csv not found: {path}")
    base = os.path.dirname(os.path.abspath(path))
    labels = list(cfg.data.labels)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in [cfg.data.path_column] + labels if c not in cols]
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(cols)})")
        rows = []
        for i, row in enumerate(reader, 2):
            rel = (row[cfg.data.path_column] or "").strip()
            if not rel:
                raise DataError(f"{path} row {i}: empty '{cfg.data.path_column}'")
            target = make_target([_value(row[c], path, i, c) for c in labels])
            patient = (row.get("patient") or "").strip() or None
            split = (row.get("split") or "").strip().lower() or None
            if split is not None and split not in SPLITS:
                raise DataError(f"{path} row {i}: split must be train, val or test, got {split!r}")
            rows.append((Sample(os.path.normpath(os.path.join(base, rel)), target, patient), split))
    if not rows:
        raise DataError(f"{path} has no rows")
    if "split" in cols:
        splits = {s: [smp for smp, sp in rows if sp == s] for s in SPLITS}
    else:
        splits = random_patient_split([s for s, _ in rows], cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    return SplitSet(splits, {"csv": path})
