"""Users' own data: a CSV with an image-path column and one 0/1 column per label in ``data.labels``.

Paths are relative to the CSV's folder (absolute paths work too). Optional columns: ``patient`` (the
split is grouped by it; without it each row is its own group) and ``split`` (``train``/``val``/``test``;
when present it is used as is instead of a seeded random split). One label column makes a binary task.

Data policy (every violation is a one-line :class:`~chexcam.errors.DataError` naming the file and row):
label cells are ``0``/``1`` (also ``0.0``/``1.0``, ``false``/``true``, ``no``/``yes``); an empty label cell
is an error (a missing label is not a negative) unless ``data.blank: ignore``, which leaves it out of the
loss and the AUROC (NaN); a ``split`` column has no empty cells; each image is listed once (a repeated or
conflicting row is an error naming both rows); a binary task (one label) has rows of both classes.
"""

from __future__ import annotations

import csv
import math
import os

from ..errors import DataError, environment
from ..registry import DATASETS
from .samples import SPLITS, Sample, SplitSet, check_classes, make_target, random_patient_split


def label_value(text, path: str, row: int, col: str, blank: str = "error") -> float:
    """One label cell -> 1.0 / 0.0; an empty cell -> NaN under ``blank="ignore"``, else an error."""
    t = (text or "").strip().lower()
    if t in ("1", "1.0", "true", "yes"):
        return 1.0
    if t in ("0", "0.0", "false", "no"):
        return 0.0
    if not t:
        if blank == "ignore":
            return math.nan
        raise DataError(f"{path} row {row}: empty '{col}' cell; write 0 or 1 (a missing label is not a negative), "
                        f"or set data.blank=ignore to leave empty cells out of the loss")
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
    blank = "ignore" if cfg.data.blank == "ignore" else "error"
    try:
        rows, cols = _read_rows(path, base, labels, cfg.data.path_column, blank)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else getattr(exc, "strerror", None) or exc
        raise DataError(f"cannot read data.csv {path}: {reason}", exit_code=environment(exc)) from None
    if not rows:
        raise DataError(f"{path} has no rows")
    check_classes([smp for smp, _ in rows], labels, path)
    if "split" in cols:
        splits = {s: [smp for smp, sp in rows if sp == s] for s in SPLITS}
    else:
        splits = random_patient_split([s for s, _ in rows], cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    return SplitSet(splits, {"csv": path})


def _read_rows(path: str, base: str, labels, path_column: str, blank: str):
    """``([(Sample, split or None)], header)``, with the data policy of the module docstring enforced."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        missing = [c for c in [path_column] + labels if c not in cols]
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(map(repr, cols))})")
        twice = sorted({c for c in cols if cols.count(c) > 1})
        if twice:
            raise DataError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header")
        rows, first = [], {}
        for i, row in enumerate(reader, 2):
            if None in row:
                raise DataError(f"{path} row {i}: more cells than the header's {len(cols)} columns")
            nul = next((c for c in cols if "\0" in (row[c] or "")), None)
            if nul is not None:  # Python's csv reads it; no path or label contains one
                raise DataError(f"{path} row {i}: a NUL byte in column '{nul}' (a binary or corrupt file?)")
            rel = (row[path_column] or "").strip()
            if not rel:
                raise DataError(f"{path} row {i}: empty '{path_column}'")
            target = make_target([label_value(row[c], path, i, c, blank) for c in labels])
            patient = (row.get("patient") or "").strip() or None
            split = (row.get("split") or "").strip().lower() or None
            if "split" in cols and split is None:
                raise DataError(f"{path} row {i}: empty 'split' cell (expected train, val or test)")
            if split is not None and split not in SPLITS:
                raise DataError(f"{path} row {i}: split must be train, val or test, got {split!r}")
            full = os.path.normpath(os.path.join(base, rel))
            key = os.path.normcase(full)
            if key in first:
                j, seen = first[key]
                kind = "repeats" if seen == tuple(row[c] for c in cols) else "conflicts with"
                raise DataError(f"{path} row {i}: {rel!r} {kind} row {j}; list each image once")
            first[key] = (i, tuple(row[c] for c in cols))
            rows.append((Sample(full, target, patient), split))
    return rows, cols
