"""Localization metrics against hand-drawn boxes: IoU, IoBB, pointing game, Wang et al. 2017 Table 4.

Boxes are ``(x1, y1, x2, y2)`` in pixel-edge coordinates. NIH's ``BBox_List_2017.csv`` gives
``x, y, w, h`` in the 1024-px image; :func:`read_bbox_csv` converts (``x2 = x + w``).

Definitions (Wang et al., "ChestX-ray8", CVPR 2017, Sec. 5.2):

- ``IoBB = area(pred & gt) / area(pred)`` (intersection over the *predicted* box) and
  ``IoU = area(pred & gt) / area(pred | gt)``;
- a ground-truth box is localized at threshold ``T`` when some predicted box of its finding on the
  same image has ``IoBB >= T`` (or ``IoU >= T``); accuracy is the fraction of localized boxes;
- average false positives (AFP): predicted boxes of the finding that overlap none of the image's
  ground-truth boxes of that finding at ``T``, per ground-truth image;
- pointing game (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside a ground-truth box.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import EXIT_ENVIRONMENT, DataError
from ..labels import CHESTXRAY14_LABELS
from ..utils import did_you_mean

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: The eight findings of BBox_List_2017.csv, in Wang et al.'s column order.
BBOX_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                 "Pneumothorax")
#: The CSV's spellings that differ from the label names.
BBOX_ALIASES = {"Infiltrate": "Infiltration"}
#: Wang et al. 2017, Table 4: accuracy at T(IoBB) = 0.1 (the row ../shared/data/README.md quotes).
WANG_2017_IOBB_0_1 = dict(zip(BBOX_FINDINGS, (0.7277, 0.9931, 0.7124, 0.7886, 0.4352, 0.1645, 0.7500, 0.4591)))

Box = Tuple[float, float, float, float]


def _div(v, n) -> float:
    return float(v) / n if n else float("nan")


def _area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def intersection(a: Sequence[float], b: Sequence[float]) -> float:
    """Area of the overlap of two ``(x1, y1, x2, y2)`` boxes."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def iou(pred: Sequence[float], gt: Sequence[float]) -> float:
    """Intersection over union (0 for two empty boxes)."""
    inter = intersection(pred, gt)
    union = _area(pred) + _area(gt) - inter
    return inter / union if union > 0 else 0.0


def iobb(pred: Sequence[float], gt: Sequence[float]) -> float:
    """Intersection over the area of the predicted box (Wang et al. 2017); 0 for an empty prediction."""
    a = _area(pred)
    return intersection(pred, gt) / a if a > 0 else 0.0


def point_in_boxes(point: Sequence[float], boxes: Sequence[Sequence[float]], tolerance: float = 0.0) -> bool:
    """Pointing-game hit: ``(x, y)`` inside any box grown by ``tolerance`` pixels on every side."""
    x, y = point
    return any(b[0] - tolerance <= x <= b[2] + tolerance and b[1] - tolerance <= y <= b[3] + tolerance
               for b in boxes)


def read_bbox_csv(path: str) -> Dict[str, List[Tuple[str, Box]]]:
    """``BBox_List_2017.csv`` -> ``{image name: [(finding, (x1, y1, x2, y2)), ...]}``.

    Copes with the NIH header quirk ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (four numbers under
    one title and three empty ones) and maps ``Infiltrate`` to ``Infiltration``.

    Raises:
        DataError: missing file, a row that is not ``name, finding, x, y, w, h``, or a finding that is not a
            ChestX-ray14 label, such as a misspelled one (names the line and the closest name).
    """
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read box list {path}: {exc.strerror}", exit_code=EXIT_ENVIRONMENT) from None
    out: Dict[str, List[Tuple[str, Box]]] = defaultdict(list)
    with fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if not header or not header[0].strip().lower().startswith("image"):
            raise DataError(f"{path} does not look like BBox_List_2017.csv (header {header!r})")
        for line, row in enumerate(rows, start=2):
            row = [c.strip() for c in row]
            if not any(row):
                continue
            try:
                name, finding = row[0], BBOX_ALIASES.get(row[1], row[1])
                x, y, w, h = (float(v) for v in row[2:6])
            except (ValueError, IndexError):
                raise DataError(f"{path} line {line}: expected 'image,finding,x,y,w,h', got {','.join(row)}") from None
            if finding not in CHESTXRAY14_LABELS:  # its rows would match no class and be dropped without a word
                raise DataError(f"{path} line {line}: unknown finding {row[1]!r}"
                                f"{did_you_mean(finding, CHESTXRAY14_LABELS)} (expected one of {', '.join(BBOX_FINDINGS)})")
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                raise DataError(f"{path} line {line}: box {x},{y},{w},{h} is not a positive-size box")
            out[name].append((finding, (x, y, x + w, y + h)))
    return dict(out)


@dataclass
class LocalizationTally:
    """Running counts per finding; feed one image at a time with :meth:`add`, read with :meth:`table`."""

    findings: Sequence[str] = BBOX_FINDINGS
    iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS
    boxes: Dict[str, int] = field(default_factory=dict)
    images: Dict[str, int] = field(default_factory=dict)
    hits_iobb: Dict[str, np.ndarray] = field(default_factory=dict)
    hits_iou: Dict[str, np.ndarray] = field(default_factory=dict)
    false_pos: Dict[str, np.ndarray] = field(default_factory=dict)
    pointing: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        for f in self.findings:
            self.boxes.setdefault(f, 0)
            self.images.setdefault(f, 0)
            self.pointing.setdefault(f, 0)
            self.hits_iobb.setdefault(f, np.zeros(len(self.iobb_thresholds), dtype=np.int64))
            self.hits_iou.setdefault(f, np.zeros(len(self.iou_thresholds), dtype=np.int64))
            self.false_pos.setdefault(f, np.zeros(len(self.iobb_thresholds), dtype=np.int64))

    def add(self, finding: str, gt: Sequence[Sequence[float]], pred: Sequence[Sequence[float]],
            peak: Optional[Sequence[float]] = None) -> None:
        """One image and finding: its ground-truth boxes, the predicted boxes, the map's peak ``(x, y)``."""
        if finding not in self.boxes or not len(gt):
            return
        self.images[finding] += 1
        self.boxes[finding] += len(gt)
        ob = np.array([[iobb(p, g) for g in gt] for p in pred]).reshape(len(pred), len(gt))
        ou = np.array([[iou(p, g) for g in gt] for p in pred]).reshape(len(pred), len(gt))
        for i, t in enumerate(self.iobb_thresholds):
            ok = ob >= t
            self.hits_iobb[finding][i] += int(ok.any(axis=0).sum())
            self.false_pos[finding][i] += int((~ok.any(axis=1)).sum())
        for i, t in enumerate(self.iou_thresholds):
            self.hits_iou[finding][i] += int((ou >= t).any(axis=0).sum())
        if peak is not None and point_in_boxes(peak, gt):
            self.pointing[finding] += 1

    def results(self) -> Dict[str, dict]:
        """Per finding: ``n_boxes``, ``n_images``, ``acc_iobb``/``afp_iobb``/``acc_iou`` (threshold ->
        value, NaN without boxes) and ``pointing`` (hit rate over images)."""
        out = {}
        for f in self.findings:
            nb, ni = self.boxes[f], self.images[f]
            out[f] = {
                "n_boxes": nb, "n_images": ni,
                "acc_iobb": {t: _div(v, nb) for t, v in zip(self.iobb_thresholds, self.hits_iobb[f])},
                "afp_iobb": {t: _div(v, ni) for t, v in zip(self.iobb_thresholds, self.false_pos[f])},
                "acc_iou": {t: _div(v, nb) for t, v in zip(self.iou_thresholds, self.hits_iou[f])},
                "pointing": _div(self.pointing[f], ni),
            }
        return out

    def overall_pointing(self) -> float:
        """Pointing-game hit rate over all (image, finding) pairs."""
        n = sum(self.images.values())
        return sum(self.pointing.values()) / n if n else float("nan")

    def table(self, reference: Optional[Dict[str, float]] = None) -> str:
        """The layout of Wang et al. 2017 Table 4 (rows: thresholds, columns: findings), with their
        T(IoBB)=0.1 accuracy beside ours and a pointing-game row."""
        res = self.results()
        ref = WANG_2017_IOBB_0_1 if reference is None else reference
        names = [f[:12] for f in self.findings]
        width = max(8, max(len(n) for n in names) + 1)
        lead = 26

        def fmt(v):
            return f"{v:.4f}" if v == v else "  -   "

        def row(title, values):
            return title.ljust(lead) + "".join(v.rjust(width) for v in values)

        lines = [row("T (IoBB / IoU)", names), row("  boxes (images)", [f"{res[f]['n_boxes']} ({res[f]['n_images']})"
                                                                       for f in self.findings])]
        for t in self.iobb_thresholds:
            lines.append(row(f"T(IoBB) = {t:g}  Acc.", [fmt(res[f]["acc_iobb"][t]) for f in self.findings]))
            if abs(t - 0.1) < 1e-9 and ref:
                lines.append(row("   Wang et al. 2017 Acc.", [fmt(ref.get(f, float("nan"))) for f in self.findings]))
            lines.append(row(f"T(IoBB) = {t:g}  AFP", [fmt(res[f]["afp_iobb"][t]) for f in self.findings]))
        for t in self.iou_thresholds:
            lines.append(row(f"T(IoU)  = {t:g}  Acc.", [fmt(res[f]["acc_iou"][t]) for f in self.findings]))
        lines.append(row("Pointing game (hit rate)", [fmt(res[f]["pointing"]) for f in self.findings]))
        return "\n".join(lines)
