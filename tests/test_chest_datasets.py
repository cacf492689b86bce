"""CheXpert and MIMIC-CXR-JPG in their published layouts, uncertain/blank label policies, the masked loss,
NaN-aware AUROC, the cross-dataset label map, and end-to-end tools/train.py + tools/eval.py runs.

The trees are tiny copies of the released layouts (exact CSV headers, folder and file names) whose
images are the bundled NIH samples re-encoded as small JPEGs (both datasets ship JPEGs).
"""

import ast
import csv
import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import paddle
import pytest
from sklearn.metrics import roc_auc_score

import chexcam
from chexcam import labels as L
from chexcam.config import config_from_dict, config_to_dict
from chexcam.data import build_split, build_splits
from chexcam.data.chexpert import map_labels
from chexcam.errors import ConfigError, DataError
from chexcam.losses import MaskedBCEWithLogitsLoss, build_loss, masked_bce_with_logits, pos_weight_from_targets
from chexcam.metrics import classification as M

from .conftest import CONFIGS, ROOT

NIH_IMAGES = os.path.join(ROOT, "data", "chestxray14_sample", "images")
CHEXPERT_CFG = os.path.join(ROOT, "configs", "chexpert.yaml")
MIMIC_CFG = os.path.join(ROOT, "configs", "mimic_cxr.yaml")
CHEST_CFG = os.path.join(ROOT, "configs", "chestxray14.yaml")
COMP = list(L.CHEXPERT_COMPETITION_LABELS)

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")
MIMIC_META_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
                     "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                     "PatientOrientationCodeSequence_CodeMeaning")
MIMIC_LABEL_HEADER = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
                      "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
                      "Pneumothorax,Support Devices")
MIMIC_SPLIT_HEADER = "dicom_id,study_id,subject_id,split"


# ---------------------------------------------------------------------------------------------
# tiny trees in the published layouts


def _sources():
    return sorted(glob.glob(os.path.join(NIH_IMAGES, "*.png")))


def _write_jpeg(path, i, size=(40, 48)):
    """NIH sample ``i % 3``, flipped/brightened by ``i`` so images differ, as a small 8-bit JPEG."""
    img = cv2.imread(_sources()[i % len(_sources())], cv2.IMREAD_GRAYSCALE)
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    if (i // 3) % 2:
        img = img[:, ::-1]
    img = np.clip(img.astype(np.int32) + 7 * (i % 5), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, 90])


def _cycle(i, k):
    return ("1.0", "0.0", "-1.0", "", "0.0", "1.0")[(i + 2 * k) % 6]


# The first training row, checked value by value under every policy.
FIRST_ROW = {"Atelectasis": "-1.0", "Cardiomegaly": "1.0", "Consolidation": "", "Edema": "0.0",
             "Pleural Effusion": "1.0"}
# valid.csv is labelled by radiologists: 0/1 only. Each competition finding has positives and negatives.
VALID_POS = [("Atelectasis", "Consolidation", "Pleural Effusion", "Pneumonia"),
             ("Cardiomegaly", "Edema", "Pneumothorax"),
             ("Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumothorax"),
             ("Consolidation", "Edema", "Pneumonia"),
             ("Edema", "Pleural Effusion")]


def make_chexpert(tmp, folder="CheXpert-v1.0-small"):
    """``tmp/<folder>/{train,valid}.csv`` and JPEGs; returns the dataset folder."""
    root = os.path.join(str(tmp), folder)
    cols = CHEXPERT_HEADER.split(",")
    obs = cols[5:]
    assert tuple(obs) == L.CHEXPERT_LABELS
    train_rows, n = [], 0
    # patients 1..8; patients 1 and 2 also have a lateral view, patient 3 a second study
    for p in range(1, 9):
        studies = [(1, "view1_frontal", "Frontal", "AP" if p % 2 else "PA")]
        if p in (1, 2):
            studies.append((1, "view2_lateral", "Lateral", ""))
        if p == 3:
            studies.append((2, "view1_frontal", "Frontal", "AP"))
        for study, view, fl, appa in studies:
            rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study{study}/{view}.jpg"
            _write_jpeg(os.path.join(root, "train", f"patient{p:05d}", f"study{study}", f"{view}.jpg"), n)
            values = {lab: _cycle(n, k) for k, lab in enumerate(obs)}
            if n == 0:
                values.update(FIRST_ROW)
            train_rows.append([rel, "Female" if p % 2 else "Male", str(40 + p), fl, appa] + [values[o] for o in obs])
            n += 1
    valid_rows = []
    for j, positives in enumerate(VALID_POS):
        p = 64541 + j
        rel = f"CheXpert-v1.0-small/valid/patient{p}/study1/view1_frontal.jpg"
        _write_jpeg(os.path.join(root, "valid", f"patient{p}", "study1", "view1_frontal.jpg"), 20 + j)
        valid_rows.append([rel, "Male", "60", "Frontal", "PA" if j % 2 else "AP"]
                          + ["1.0" if o in positives else "0.0" for o in obs])
    # one lateral in valid.csv (blank AP/PA, as released)
    rel = "CheXpert-v1.0-small/valid/patient64541/study1/view2_lateral.jpg"
    _write_jpeg(os.path.join(root, "valid", "patient64541", "study1", "view2_lateral.jpg"), 30)
    valid_rows.append([rel, "Male", "60", "Lateral", ""] + ["1.0" if o == "Edema" else "0.0" for o in obs])
    for name, rows in (("train.csv", train_rows), ("valid.csv", valid_rows)):
        with open(os.path.join(root, name), "w", newline="") as fh:
            fh.write(CHEXPERT_HEADER + "\n")
            csv.writer(fh, lineterminator="\n").writerows(rows)
    return root


def _dicom(i):
    h = hashlib.sha1(str(i).encode()).hexdigest()
    return "-".join(h[k:k + 8] for k in range(0, 40, 8))


# subject -> split, studies -> [(ViewPosition)]
MIMIC_SUBJECTS = [
    ("10000032", "train", {"50414267": ["PA", "LATERAL"], "53189527": ["AP"]}),
    ("10000764", "train", {"57375967": ["AP", "LL"]}),
    ("10000898", "train", {"50771383": ["PA"]}),
    ("10000935", "train", {"51178377": ["AP"], "55697293": ["PA"]}),
    ("10002131", "train", {"56789012": ["PA"]}),   # this study is missing from the label file
    ("10001176", "validate", {"53186264": ["PA"]}),
    ("10001217", "validate", {"52067803": ["AP"]}),
    ("11001401", "test", {"51313917": ["PA", "LATERAL"]}),
    ("12001884", "test", {"52162815": ["AP"]}),
    ("19002013", "test", {"54297290": ["PA"], "58970113": ["AP"]}),
]
MIMIC_UNLABELLED_STUDY = "56789012"


def _gz(path, lines):
    with gzip.open(path, "wt", newline="") as fh:
        fh.write("\n".join(lines) + "\n")


def make_mimic(tmp, negbio=False):
    """``tmp/mimic-cxr-jpg/2.0.0`` with the three ``.csv.gz`` files and ``files/pXX/pSUBJECT/sSTUDY/*.jpg``."""
    root = os.path.join(str(tmp), "mimic-cxr-jpg", "2.0.0")
    label_cols = MIMIC_LABEL_HEADER.split(",")[2:]
    assert sorted(label_cols) == sorted(L.CHEXPERT_LABELS)
    meta, labels, split = [MIMIC_META_HEADER], [MIMIC_LABEL_HEADER], [MIMIC_SPLIT_HEADER]
    n = 0
    for s_i, (subject, sp, studies) in enumerate(MIMIC_SUBJECTS):
        for st_i, (study, views) in enumerate(studies.items()):
            for view in views:
                dicom = _dicom(n)
                _write_jpeg(os.path.join(root, "files", f"p{subject[:2]}", f"p{subject}", f"s{study}", f"{dicom}.jpg"), n)
                desc = "CHEST (PA AND LAT)" if view in ("PA", "LATERAL") else "CHEST (PORTABLE AP)"
                orient = "Erect" if view != "AP" else "Recumbent"
                code = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}
                meta.append(f"{dicom},{subject},{study},{desc},{view},3056,2544,21800506,213014.531,{desc},"
                            f"{code[view]},{orient}")
                split.append(f"{dicom},{study},{subject},{sp}")
                n += 1
            if study == MIMIC_UNLABELLED_STUDY:
                continue
            if sp == "test":  # both classes of every competition finding in the test split
                vals = ["1.0" if (c + s_i + st_i) % 2 else "0.0" for c in range(len(label_cols))]
            else:
                vals = [_cycle(s_i + st_i, c) for c in range(len(label_cols))]
            labels.append(",".join([subject, study] + vals))
    _gz(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv.gz"), meta)
    _gz(os.path.join(root, f"mimic-cxr-2.0.0-{'negbio' if negbio else 'chexpert'}.csv.gz"), labels)
    _gz(os.path.join(root, "mimic-cxr-2.0.0-split.csv.gz"), split)
    return root


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory):
    return make_chexpert(tmp_path_factory.mktemp("chexpert"))


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
    return make_mimic(tmp_path_factory.mktemp("mimic"))


def _cfg(path, root, **over):
    o = {"data.root": root, "seed": 0}
    o.update(over)
    return chexcam.load_config(path, [f"{k}={v}" for k, v in o.items()])


# ---------------------------------------------------------------------------------------------
# CheXpert


def test_chexpert_layout_paths_patients_and_official_splits(chexpert_root):
    cfg = _cfg(CHEXPERT_CFG, chexpert_root, **{"data.view": "all", "data.val_fraction": 0.25})
    sp = build_splits(cfg).splits
    assert len(sp["test"]) == 6 and all("/valid/patient645" in s.path for s in sp["test"])  # valid.csv = test
    assert len(sp["train"]) + len(sp["val"]) == 11
    assert all(os.path.isfile(s.path) for v in sp.values() for s in v)
    pats = {k: {s.patient for s in v} for k, v in sp.items()}
    assert len(pats["val"]) == 2 and not (pats["train"] & pats["val"]) and not (pats["test"] & (pats["train"] | pats["val"]))
    assert all(p.startswith("patient") for v in pats.values() for p in v)
    # seeded: same config, same split; another seed, another carve-out
    again = {s.path for s in build_split(_cfg(CHEXPERT_CFG, chexpert_root, **{"data.view": "all", "data.val_fraction": 0.25}), "val")}
    assert again == {s.path for s in sp["val"]}
    other = build_split(_cfg(CHEXPERT_CFG, chexpert_root, **{"data.view": "all", "data.val_fraction": 0.25, "seed": 3}), "val")
    assert {s.patient for s in other} != pats["val"] or len(pats["train"]) == 0
    # random_patient pools both CSVs, grouped by patient
    rp = build_splits(_cfg(CHEXPERT_CFG, chexpert_root, **{"data.view": "all", "data.split_mode": "random_patient",
                                                            "data.val_fraction": 0.2, "data.test_fraction": 0.2})).splits
    assert sum(len(v) for v in rp.values()) == 17
    groups = [{s.patient for s in rp[k]} for k in ("train", "val", "test")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])


def test_chexpert_root_may_be_the_folder_above_or_renamed(chexpert_root, tmp_path):
    parent = os.path.dirname(chexpert_root)
    a = build_split(_cfg(CHEXPERT_CFG, parent, **{"data.view": "all"}), "test")
    renamed = str(tmp_path / "my_chexpert")
    os.symlink(chexpert_root, renamed)
    b = build_split(_cfg(CHEXPERT_CFG, renamed, **{"data.view": "all"}), "test")
    assert len(a) == len(b) == 6 and all(os.path.isfile(s.path) for s in a + b)
    assert all(s.path.startswith(renamed + os.sep) for s in b)


@pytest.mark.parametrize("uncertain,blank,expected", [
    ("ones", "zeros", [1, 1, 0, 0, 1]),
    ("zeros", "zeros", [0, 1, 0, 0, 1]),
    ("ignore", "zeros", [np.nan, 1, 0, 0, 1]),
    ("ones", "ignore", [1, 1, np.nan, 0, 1]),
    ("ignore", "ignore", [np.nan, 1, np.nan, 0, 1]),
])
def test_chexpert_uncertain_and_blank_policies(chexpert_root, uncertain, blank, expected):
    cfg = _cfg(CHEXPERT_CFG, chexpert_root, **{"data.uncertain": uncertain, "data.blank": blank,
                                                 "data.view": "all", "data.split_mode": "random_patient"})
    assert cfg.data.labels == COMP  # the chexpert_competition preset, in the paper's order
    every = [s for v in build_splits(cfg).splits.values() for s in v]
    first = next(s for s in every if s.path.endswith(os.path.join("patient00001", "study1", "view1_frontal.jpg")))
    assert first.target.dtype == np.float32
    np.testing.assert_array_equal(first.target, np.array(expected, np.float32))
    allt = np.stack([s.target for s in every])
    assert np.isnan(allt).any() == (uncertain == "ignore" or blank == "ignore")
    assert set(np.unique(allt[~np.isnan(allt)])) <= {0.0, 1.0}


def test_chexpert_view_filter(chexpert_root):
    def paths(view):
        sp = build_splits(_cfg(CHEXPERT_CFG, chexpert_root, **{"data.view": view})).splits
        return [s.path for v in sp.values() for s in v]

    every, frontal, lateral = paths("all"), paths("frontal"), paths("lateral")
    assert len(every) == 17 and len(lateral) == 3 and len(frontal) == 14
    assert all("lateral" in p for p in lateral) and not any("lateral" in p for p in frontal)
    pa, ap = paths("PA"), paths("AP")
    assert len(pa) + len(ap) == 14 and not set(pa) & set(ap)


def test_chexpert_user_mistakes_are_one_line(chexpert_root, tmp_path):
    with pytest.raises(DataError, match="'Pleural Effusion' here"):  # a ChestX-ray14 name for a CheXpert label
        build_splits(_cfg(CHEXPERT_CFG, chexpert_root, **{"data.labels": "[Effusion]", "model.num_classes": 1}))
    with pytest.raises(DataError, match="no train.csv and valid.csv"):
        build_splits(_cfg(CHEXPERT_CFG, str(tmp_path)))
    bad = tmp_path / "CheXpert-v1.0-small"
    bad.mkdir()
    lines = open(os.path.join(chexpert_root, "train.csv")).read().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",2.0"
    (bad / "train.csv").write_text("\n".join(lines) + "\n")
    (bad / "valid.csv").write_text("Path,Sex,Age\n")
    with pytest.raises(DataError) as info:
        build_splits(_cfg(CHEXPERT_CFG, str(bad), **{"data.labels": "chexpert", "model.num_classes": 14,
                                                     "data.view": "all"}))
    msg = str(info.value)
    assert "train.csv line 3" in msg and "Support Devices" in msg and "'2.0'" in msg and "\n" not in msg
    with pytest.raises(DataError, match=r"valid.csv is not a CheXpert label file: missing column\(s\) Frontal/Lateral"):
        build_splits(_cfg(CHEXPERT_CFG, str(bad)))


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG


def test_mimic_layout_official_split_and_study_labels(mimic_root):
    cfg = _cfg(MIMIC_CFG, mimic_root, **{"data.view": "all", "data.labels": "chexpert", "model.num_classes": 14})
    res = build_splits(cfg)
    sp = res.splits
    # 16 images, 1 of them of a study without labels; the published split: train, validate, test
    assert [len(sp[k]) for k in ("train", "val", "test")] == [8, 2, 5]
    assert res.info["unlabelled_images"] == 1 and "chexpert labeler" in res.info["labels_release"]
    assert all(os.path.isfile(s.path) for v in sp.values() for s in v)
    s = sp["train"][0]
    parts = os.path.relpath(s.path, mimic_root).split(os.sep)
    assert parts[:4] == ["files", "p10", "p10000032", "s50414267"] and parts[4].endswith(".jpg")
    assert s.patient == "10000032"
    subj = {k: {x.patient for x in v} for k, v in sp.items()}
    assert not (subj["train"] & subj["val"]) and not (subj["train"] & subj["test"]) and not (subj["val"] & subj["test"])
    # every image of a study carries the study's labels, in data.labels order (CheXpert's), not the file's
    label_cols = MIMIC_LABEL_HEADER.split(",")
    with gzip.open(os.path.join(mimic_root, "mimic-cxr-2.0.0-chexpert.csv.gz"), "rt") as fh:
        row = next(r for r in csv.DictReader(fh) if r["study_id"] == "50414267")
    same_study = [x for x in sp["train"] if "s50414267" in x.path]
    assert len(same_study) == 2 and label_cols[2] == "Atelectasis"
    want = [{"1.0": 1.0, "0.0": 0.0, "-1.0": 1.0, "": 0.0}[row[c]] for c in L.CHEXPERT_LABELS]  # ones / zeros
    for x in same_study:
        np.testing.assert_array_equal(x.target, np.array(want, np.float32))


def test_mimic_view_policies_negbio_and_random_patient(mimic_root, tmp_path):
    def count(**over):
        return sum(len(v) for v in build_splits(_cfg(MIMIC_CFG, mimic_root, **over)).splits.values())

    assert count(**{"data.view": "all"}) == 15
    assert count(**{"data.view": "frontal"}) == 12 and count(**{"data.view": "lateral"}) == 3
    assert count(**{"data.view": "PA"}) + count(**{"data.view": "AP"}) == 12
    every = [s for v in build_splits(_cfg(MIMIC_CFG, mimic_root, **{"data.uncertain": "ignore", "data.blank": "ignore"})).splits.values() for s in v]
    t = np.stack([s.target for s in every])
    assert np.isnan(t).any() and set(np.unique(t[~np.isnan(t)])) <= {0.0, 1.0}
    # NegBio labels through data.metadata; random_patient ignores the split file and groups by subject
    nb = make_mimic(tmp_path, negbio=True)
    res = build_splits(_cfg(MIMIC_CFG, nb, **{"data.metadata": os.path.join(nb, "mimic-cxr-2.0.0-negbio.csv.gz"),
                                              "data.split_mode": "random_patient", "data.val_fraction": 0.2,
                                              "data.test_fraction": 0.2}))
    assert "negbio" in res.info["labels_release"]
    groups = [{s.patient for s in res.splits[k]} for k in ("train", "val", "test")]
    assert all(groups) and not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    os.remove(os.path.join(nb, "mimic-cxr-2.0.0-split.csv.gz"))
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-split.csv"):
        build_splits(_cfg(MIMIC_CFG, nb, **{"data.metadata": os.path.join(nb, "mimic-cxr-2.0.0-negbio.csv.gz")}))


# ---------------------------------------------------------------------------------------------
# masked loss


def _bce_np(z, y, pw=None):
    pw = np.ones(z.shape[1]) if pw is None else np.asarray(pw)
    ls = -np.logaddexp(0, -z)       # log sigmoid(z)
    l1s = -np.logaddexp(0, z)       # log (1 - sigmoid(z))
    return -(pw * y * ls + (1 - y) * l1s)


def test_masked_loss_equals_bce_without_nan_and_manual_with_nan(rng):
    z = rng.normal(0, 2, (6, 4)).astype(np.float32)
    y = (rng.random((6, 4)) > 0.5).astype(np.float32)
    pw = np.array([1.0, 2.5, 0.5, 4.0], np.float32)
    for w in (None, paddle.to_tensor(pw)):
        ref = paddle.nn.BCEWithLogitsLoss(pos_weight=w)(paddle.to_tensor(z), paddle.to_tensor(y))
        got = MaskedBCEWithLogitsLoss(pos_weight=w)(paddle.to_tensor(z), paddle.to_tensor(y))
        np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)
    ym = y.copy()
    ym[0, 1] = ym[3, 3] = ym[5, 0] = np.nan
    keep = ~np.isnan(ym)
    manual = _bce_np(z.astype(np.float64), np.nan_to_num(ym), pw)[keep].sum() / keep.sum()
    got = masked_bce_with_logits(paddle.to_tensor(z), paddle.to_tensor(ym), paddle.to_tensor(pw))
    np.testing.assert_allclose(float(got), manual, rtol=1e-5)


def _grads(y, pw=None, seed=0):
    """Gradients of a tiny linear model's weights and of its logits under the masked loss."""
    paddle.seed(seed)
    layer = paddle.nn.Linear(3, y.shape[1])
    x = paddle.to_tensor(np.random.default_rng(seed).normal(0, 1, (y.shape[0], 3)).astype(np.float32))
    z = layer(x)
    z.retain_grads()
    loss = masked_bce_with_logits(z, paddle.to_tensor(y), None if pw is None else paddle.to_tensor(pw))
    loss.backward()
    return float(loss), layer.weight.grad.numpy().copy(), z.grad.numpy().copy(), z.numpy()


def test_masked_label_changes_nothing_in_the_gradient():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], np.float32)
    pw = np.array([2.0, 1.0, 3.0], np.float32)
    masked = y.copy()
    masked[1, 2] = np.nan
    loss_m, gw_m, gz_m, z = _grads(masked, pw)
    # the masked entry gets no gradient at all, whichever way its label would have gone
    assert gz_m[1, 2] == 0.0
    flipped = [_grads(np.where(np.arange(12).reshape(4, 3) == 5, v, y).astype(np.float32), pw) for v in (0.0, 1.0)]
    assert flipped[0][2][1, 2] != flipped[1][2][1, 2]  # unmasked, flipping that label does change the gradient
    # manual: the gradient of sum over observed entries / #observed, on the other 11 entries only
    keep = ~np.isnan(masked)
    sig = 1 / (1 + np.exp(-z.astype(np.float64)))
    dz = np.where(keep, (pw * np.nan_to_num(masked) * (sig - 1) + (1 - np.nan_to_num(masked)) * sig) / keep.sum(), 0.0)
    np.testing.assert_allclose(gz_m, dz, rtol=1e-5, atol=1e-7)
    # and the weights' gradient equals the plain loss's gradient computed without that entry
    paddle.seed(0)
    layer = paddle.nn.Linear(3, 3)
    x = paddle.to_tensor(np.random.default_rng(0).normal(0, 1, (4, 3)).astype(np.float32))
    per = paddle.nn.functional.binary_cross_entropy_with_logits(layer(x), paddle.to_tensor(np.nan_to_num(masked)),
                                                                reduction="none", pos_weight=paddle.to_tensor(pw))
    (per * paddle.to_tensor(keep.astype(np.float32))).sum().divide(paddle.to_tensor(float(keep.sum()))).backward()
    np.testing.assert_allclose(gw_m, layer.weight.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert np.isfinite(loss_m)


def test_all_masked_batch_is_zero_and_build_loss_picks_by_policy():
    z = paddle.to_tensor(np.ones((2, 3), np.float32), stop_gradient=False)
    loss = masked_bce_with_logits(z, paddle.to_tensor(np.full((2, 3), np.nan, np.float32)))
    loss.backward()
    assert float(loss) == 0.0 and not z.grad.numpy().any()
    cfg = chexcam.load_config(CHEXPERT_CFG)
    assert isinstance(build_loss(cfg), paddle.nn.BCEWithLogitsLoss)  # NaN where none is expected still stops training
    for over in ("data.uncertain=ignore", "data.blank=ignore"):
        assert isinstance(build_loss(chexcam.load_config(CHEXPERT_CFG, [over])), MaskedBCEWithLogitsLoss)
    t = np.array([[1, 0], [np.nan, 0], [0, np.nan], [0, 1]], np.float32)
    np.testing.assert_allclose(pos_weight_from_targets(t), [2 / 1, 2 / 1])


# ---------------------------------------------------------------------------------------------
# NaN-aware metrics


def test_masked_auroc_equals_sklearn_on_the_unmasked_subset(rng):
    n = 60
    y = (rng.random((n, 3)) > 0.6).astype(np.float64)
    p = np.clip(y * 0.3 + rng.random((n, 3)) * 0.7, 0, 1)
    y[rng.random((n, 3)) < 0.3] = np.nan
    got = M.per_class_auroc(y, p)
    for k in range(3):
        keep = ~np.isnan(y[:, k])
        assert got[k] == pytest.approx(roc_auc_score(y[keep, k], p[keep, k]))
    assert M.count_positives(y[:, 0]) == int(np.nansum(y[:, 0]))
    ci = M.bootstrap_auroc(y, p, n=50, seed=0)
    assert all(lo <= a <= hi for lo, a, hi in zip(ci["low"], got, ci["high"]))
    keep = ~np.isnan(y)
    z = np.log(p / (1 - p + 1e-9) + 1e-9)
    assert M.bce_loss(y, z) == pytest.approx(_bce_np(z, np.nan_to_num(y))[keep].mean())
    thr = M.best_f1_threshold(y[:, 1], p[:, 1])
    k1 = ~np.isnan(y[:, 1])
    assert M.best_f1_threshold(y[k1, 1], p[k1, 1]) == thr and 0 <= M.f1_at(y[:, 1], p[:, 1], thr) <= 1
    assert M.roc_points(y[:, 2], p[:, 2]) is not None
    only_nan = np.full(5, np.nan)
    assert M.auroc(only_nan, np.linspace(0, 1, 5)) is None


# ---------------------------------------------------------------------------------------------
# config, label map, layering


def test_config_presets_choices_and_shipped_configs():
    assert CHEXPERT_CFG in CONFIGS and MIMIC_CFG in CONFIGS  # covered by test_config's every-config test
    for path in (CHEXPERT_CFG, MIMIC_CFG):
        cfg = chexcam.load_config(path)
        assert cfg.data.labels == COMP and cfg.model.num_classes == 5 and cfg.data.view == "frontal"
        back = config_from_dict(config_to_dict(cfg))  # checkpoints store the expanded list
        assert back.data.labels == COMP and back.data.uncertain == cfg.data.uncertain
    cfg = chexcam.load_config(CHEXPERT_CFG, ["data.labels=chexpert", "model.num_classes=14"])
    assert tuple(cfg.data.labels) == L.CHEXPERT_LABELS
    with pytest.raises(ConfigError, match="did you mean 'chexpert_competition'"):
        chexcam.load_config(CHEXPERT_CFG, ["data.labels=chexpert_competitoin"])
    with pytest.raises(ConfigError, match="data.uncertain.*'ones', 'zeros', 'ignore'"):
        chexcam.load_config(CHEXPERT_CFG, ["data.uncertain=maybe"])
    with pytest.raises(ConfigError, match="data.blank"):
        chexcam.load_config(CHEXPERT_CFG, ["data.blank=ones"])
    with pytest.raises(ConfigError, match="did you mean 'data.uncertain'"):
        chexcam.load_config(CHEXPERT_CFG, ["data.uncertian=ones"])
    with pytest.raises(ConfigError, match="frontal images only"):
        chexcam.load_config(CHEST_CFG, ["data.view=frontal"])
    with pytest.raises(ConfigError, match="official or random_patient"):
        chexcam.load_config(MIMIC_CFG, ["data.split_mode=chexnet"])


def test_label_map_constants_and_pairs():
    m = L.CHESTXRAY14_TO_CHEXPERT
    assert m["Effusion"] == "Pleural Effusion" and set(m.values()) <= set(L.CHEXPERT_LABELS)
    assert set(m) | set(L.CHESTXRAY14_UNPAIRED) == set(L.CHESTXRAY14_LABELS) and not set(m) & set(L.CHESTXRAY14_UNPAIRED)
    assert set(m.values()) | set(L.CHEXPERT_UNPAIRED) == set(L.CHEXPERT_LABELS)
    assert "Mass" in L.CHESTXRAY14_UNPAIRED and "Lung Lesion" in L.CHEXPERT_UNPAIRED
    pairs, skipped = map_labels(L.CHESTXRAY14_LABELS, "chexpert")
    assert [(k, d) for k, _, d in pairs] == [(0, "Atelectasis"), (1, "Cardiomegaly"), (2, "Pleural Effusion"),
                                             (6, "Pneumonia"), (7, "Pneumothorax"), (8, "Consolidation"), (9, "Edema")]
    assert set(skipped) == set(L.CHESTXRAY14_UNPAIRED)
    back, skipped_back = map_labels(L.CHEXPERT_LABELS, "chestxray14")  # the other way round
    assert ("Pleural Effusion", "Effusion") in [(m_, d) for _, m_, d in back] and "No Finding" in skipped_back
    assert map_labels(["Parasitized"], "csv") == ([(0, "Parasitized", "Parasitized")], {})


def test_new_modules_import_downward_only():
    for rel in ("chexcam/losses.py", "chexcam/data/chexpert.py", "chexcam/data/mimic_cxr.py",
                "chexcam/metrics/classification.py", "chexcam/labels.py"):
        tree = ast.parse(open(os.path.join(ROOT, rel)).read())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bad = [n for n in names if any(part in n.split(".") for part in ("engine", "tools", "cam", "serving", "inference"))]
        assert not bad, (rel, bad)


# ---------------------------------------------------------------------------------------------
# end to end through the tools


def _tool(name, config, overrides, quiet=False):
    args = [sys.executable, os.path.join(ROOT, "tools", name), "-c", config] + (["-q"] if quiet else [])
    for o in overrides:
        args += ["-o", o]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _tiny(root, out, **extra):
    over = {"data.root": root, "output_dir": out, "model.name": "densenet_small", "model.output_stride": 8,
            "data.resize": 32, "data.crop": 32, "data.resize_mode": "square", "train.epochs": 1,
            "train.batch_size": 4, "eval.batch_size": 8, "eval.bootstrap": 20, "train.log_interval": 1,
            "device": "cpu", "data.view": "all"}
    over.update(extra)
    return [f"{k}={v}" for k, v in over.items()]


def _check_run(out, n_test):
    with open(os.path.join(out, "history.jsonl")) as fh:
        hist = [json.loads(line) for line in fh]
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"]) and np.isfinite(hist[0]["val_loss"])
    with open(os.path.join(out, "metrics.json")) as fh:
        m = json.load(fh)
    assert m["images"] == n_test and [r["label"] for r in m["per_class"]] == COMP
    assert m["skipped_classes"] == {} and m["label_map"] == {}
    return hist, m


def test_chexpert_train_and_eval_end_to_end_with_u_ignore(chexpert_root, tmp_path):
    out = str(tmp_path / "run")
    over = _tiny(chexpert_root, out, **{"data.uncertain": "ignore", "data.val_fraction": 0.25})
    proc = _tool("train.py", CHEXPERT_CFG, over)
    assert "uncertain (-1) labels -> ignore, blank labels -> zeros" in proc.stderr
    ev = _tool("eval.py", CHEXPERT_CFG, over, quiet=True)
    hist, m = _check_run(out, 6)
    assert "| Atelectasis |" in ev.stdout and "| Pleural Effusion |" in ev.stdout
    assert all(r["auroc"] is not None and r["ignored"] == 0 for r in m["per_class"])  # valid.csv: 0/1 only
    assert m["labels_release"] == "CheXpert-v1.0-small"


def test_mimic_train_and_eval_end_to_end_with_blank_ignore(mimic_root, tmp_path):
    out = str(tmp_path / "run")
    over = _tiny(mimic_root, out, **{"data.uncertain": "zeros", "data.blank": "ignore"})
    _tool("train.py", MIMIC_CFG, over, quiet=True)
    ev = _tool("eval.py", MIMIC_CFG, over, quiet=True)
    hist, m = _check_run(out, 5)
    assert "| Edema |" in ev.stdout and m["labels_release"].startswith("MIMIC-CXR-JPG")


def test_chestxray14_checkpoint_evaluated_on_chexpert_reports_shared_and_skipped_classes(chexpert_root, tmp_path):
    """A 14-class ChestX-ray14 model on the CheXpert tree: 7 shared findings scored, 7 skipped with reasons."""
    model_over = ["model.name=densenet_small", "model.output_stride=8", "model.allow_random=true"]
    cfg = chexcam.load_config(CHEST_CFG, model_over)
    paddle.seed(0)
    model = chexcam.build_model(cfg)
    ckpt = str(tmp_path / "nih.pdparams")
    paddle.save({"model": model.state_dict(), "config": config_to_dict(cfg)}, ckpt)
    out = str(tmp_path / "cross")
    over = ["data.dataset=chexpert"] + _tiny(chexpert_root, out, **{"model.weights": ckpt, "data.val_fraction": 0.25})
    proc = _tool("eval.py", CHEST_CFG, over)
    assert "| Pleural Effusion (model: Effusion) |" in proc.stdout and "| Atelectasis |" in proc.stdout
    assert "Mass" not in proc.stdout.split("metrics.json")[0]
    for lab in L.CHESTXRAY14_UNPAIRED:
        assert f"model class {lab} skipped on chexpert" in proc.stderr  # the log says which and why
    assert "Lung Lesion lumps masses" in proc.stderr
    with open(os.path.join(out, "metrics.json")) as fh:
        m = json.load(fh)
    assert [r["label"] for r in m["per_class"]] == ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumonia",
                                                   "Pneumothorax", "Consolidation", "Edema"]
    assert m["label_map"] == {"Effusion": "Pleural Effusion"} and set(m["skipped_classes"]) == set(L.CHESTXRAY14_UNPAIRED)
    assert m["per_class"][2]["model_class"] == "Effusion" and m["per_class"][2]["chexnet_paper"] == pytest.approx(0.8638)
    report = open(os.path.join(out, "report.md")).read()
    assert "## Model classes skipped on chexpert" in report
    for lab, reason in L.CHESTXRAY14_UNPAIRED.items():
        assert f"- {lab}: {reason}" in report
