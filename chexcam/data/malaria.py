"""NIH/NLM Malaria Cell Images: ``root/Parasitized/*.png`` and ``root/Uninfected/*.png``.

The single target is 1 for ``Parasitized`` (``chexcam.labels.MALARIA_CLASSES`` gives the index). File
names carry slide and patient, ``C<slide>P<patient>...`` (e.g. ``C101P62ThinF_IMG_..._cell_87.png``), and
cells of one patient look alike, so the split is grouped by patient (``P62``), stratified by class and
seeded: no patient is ever in two splits. A class folder without images is an error.
"""

from __future__ import annotations

import logging
import os
import re

from ..errors import DataError
from ..labels import MALARIA_CLASSES
from ..registry import DATASETS
from .samples import Sample, SplitSet, make_target, stratified_patient_split

logger = logging.getLogger(__name__)

_PATIENT = re.compile(r"^C\d+[A-Z]?(P\d+)", re.IGNORECASE)
_SLIDE = re.compile(r"^(C\d+)", re.IGNORECASE)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def malaria_patient(name: str) -> str:
    """``C101P62ThinF_...`` -> ``P62``.

    Some negative slides carry no patient (``C12NThinF_...``, ``C201ThinF_...``): their slide (``C12``) is
    the group. Names matching neither are grouped by their first ``_`` token.
    """
    m = _PATIENT.match(name)
    if m:
        return m.group(1).upper()
    m = _SLIDE.match(name)
    return m.group(1).upper() if m else name.split("_")[0]


def find_class_root(root: str) -> str:
    for cand in (root, os.path.join(root, "cell_images")):
        if all(os.path.isdir(os.path.join(cand, c)) for c in MALARIA_CLASSES):
            return cand
    raise DataError(f"data.root={root} has no {' and '.join(MALARIA_CLASSES)} folders (nor cell_images/ with them)")


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def check_both_classes(root: str) -> None:
    """Refuse a cell that is in both class folders (the same name and the same bytes, or one file reached by two
    links): it would be trained with both labels."""
    folders = [os.path.join(root, c) for c in MALARIA_CLASSES]
    other = {n: os.path.join(folders[1], n) for n in os.listdir(folders[1])}
    both = []
    for name in sorted(os.listdir(folders[0])):
        a, b = os.path.join(folders[0], name), other.get(name)
        if b is None or not (os.path.isfile(a) and os.path.isfile(b)):
            continue
        if os.path.samefile(a, b) or (os.path.getsize(a) == os.path.getsize(b) and _same_bytes(a, b)):
            both.append(name)
    if both:
        raise DataError(f"{len(both)} image(s) are in both {folders[0]} and {folders[1]} (the same name and bytes, "
                        f"e.g. {both[0]}): a cell cannot have both labels; remove one copy")


@DATASETS.register("malaria")
def malaria(cfg) -> SplitSet:
    """List the cells, label Parasitized = 1 and split by patient (``data.val_fraction``/``test_fraction``)."""
    if not cfg.data.root:
        raise DataError("data.root is not set: point it at the folder holding Parasitized/ and Uninfected/")
    if len(cfg.data.labels) != 1:
        raise DataError(f"the malaria dataset has one output (Parasitized); data.labels is {cfg.data.labels}")
    root = find_class_root(cfg.data.root)
    samples = []
    unnamed = 0
    for value, cls in enumerate(MALARIA_CLASSES):
        folder = os.path.join(root, cls)
        names = [n for n in sorted(os.listdir(folder)) if n.lower().endswith(IMAGE_EXTS)]
        if not names:  # a one-class model would train without a word and mean nothing
            raise DataError(f"{folder} has no images ({', '.join(IMAGE_EXTS)}): the malaria dataset needs cells "
                            f"of both classes, {' and '.join(MALARIA_CLASSES)}")
        for name in names:
            unnamed += _SLIDE.match(name) is None
            samples.append(Sample(os.path.join(folder, name), make_target([float(value)]), malaria_patient(name)))
    if unnamed:
        logger.warning("%d file names lack C<slide>[P<patient>]; grouped by their first '_' token", unnamed)
    check_both_classes(root)
    splits = stratified_patient_split(samples, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    return SplitSet(splits, {"root": root, "patients": len({s.patient for s in samples})})
