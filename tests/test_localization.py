"""IoU / IoBB / pointing game, the NIH box list, the Wang et al. 2017 table and the benchmark itself."""

import os

import cv2
import numpy as np
import pytest

import chexcam
from chexcam.errors import DataError
from chexcam.metrics.localization import (
    BBOX_FINDINGS,
    WANG_2017_IOBB_0_1,
    LocalizationTally,
    iobb,
    iou,
    point_in_boxes,
    read_bbox_csv,
)

from .conftest import ROOT, shared_path

CHEST = os.path.join(ROOT, "configs", "chestxray14.yaml")


def test_iou_and_iobb():
    gt = (0, 0, 10, 10)
    assert iou((0, 0, 10, 10), gt) == 1.0 and iobb((0, 0, 10, 10), gt) == 1.0
    assert iou((5, 0, 15, 10), gt) == pytest.approx(50 / 150)
    assert iobb((5, 0, 15, 10), gt) == pytest.approx(0.5)  # over the predicted box's area
    assert iobb((2, 2, 4, 4), gt) == 1.0 and iou((2, 2, 4, 4), gt) == pytest.approx(0.04)  # small box inside
    assert iobb((20, 20, 30, 30), gt) == 0.0 and iobb((3, 3, 3, 9), gt) == 0.0  # disjoint, empty
    assert point_in_boxes((10, 5), [gt]) and not point_in_boxes((11, 5), [gt])
    assert point_in_boxes((11, 5), [gt], tolerance=1)


def test_read_bbox_csv_quirks(tmp_path):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                 "a.png,Infiltrate,10,20,30,40\n"
                 "a.png,Mass,0.5,1.5,2,3\n"
                 "b.png,Effusion,1,2,3,4,,\n")
    gt = read_bbox_csv(str(p))
    assert gt["a.png"] == [("Infiltration", (10, 20, 40, 60)), ("Mass", (0.5, 1.5, 2.5, 4.5))]
    assert gt["b.png"] == [("Effusion", (1, 2, 4, 6))]
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,x,4\n")
    with pytest.raises(DataError, match="line 2"):
        read_bbox_csv(str(p))
    with pytest.raises(DataError, match="cannot read"):
        read_bbox_csv(str(tmp_path / "none.csv"))


@pytest.mark.shared_data
def test_real_box_list_has_984_boxes_on_880_images():
    gt = read_bbox_csv(shared_path("chestxray14", "metadata", "BBox_List_2017.csv"))
    assert len(gt) == 880 and sum(len(v) for v in gt.values()) == 984
    assert {f for v in gt.values() for f, _ in v} == set(BBOX_FINDINGS)
    assert all(0 <= b[0] < b[2] <= 1024 and 0 <= b[1] < b[3] <= 1024 for v in gt.values() for _, b in v)


def test_tally_counts_and_wang_layout():
    t = LocalizationTally()
    # Mass: one gt box, a prediction inside it (IoBB 1, IoU 0.25) and a false positive far away
    t.add("Mass", [(0, 0, 20, 20)], [(0, 0, 10, 10), (50, 50, 60, 60)], peak=(5, 5))
    # Mass again: two gt boxes on one image, one found
    t.add("Mass", [(0, 0, 10, 10), (100, 100, 110, 110)], [(0, 0, 10, 10)], peak=(200, 200))
    r = t.results()["Mass"]
    assert (r["n_boxes"], r["n_images"]) == (3, 2)
    assert r["acc_iobb"][0.9] == pytest.approx(2 / 3) and r["afp_iobb"][0.1] == pytest.approx(0.5)
    assert r["acc_iou"][0.2] == pytest.approx(2 / 3) and r["acc_iou"][0.3] == pytest.approx(1 / 3)
    assert r["pointing"] == 0.5 and np.isnan(t.results()["Nodule"]["pointing"])
    table = t.table()
    lines = table.splitlines()
    assert lines[0].split() == ["T", "(IoBB", "/", "IoU)", *BBOX_FINDINGS]
    assert sum(line.startswith("T(IoBB)") for line in lines) == 10 and sum(line.startswith("T(IoU)") for line in lines) == 7
    wang = next(line for line in lines if "Wang" in line)
    assert "0.7277" in wang and "0.9931" in wang and f"{WANG_2017_IOBB_0_1['Nodule']:.4f}" in wang


def _synthetic_boxed_set(tmp_path):
    """Three 128-px images, one with two findings, their box list and a training list holding one."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    for name in ("x1.png", "x2.png", "x3.png"):
        cv2.imwrite(str(img_dir / name), rng.integers(0, 255, (128, 128), np.uint8))
    csv = tmp_path / "BBox_List_2017.csv"
    csv.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                   "x1.png,Mass,10,10,40,40\nx1.png,Infiltrate,60,60,30,30\n"
                   "x2.png,Nodule,70,20,20,20\nx3.png,Cardiomegaly,30,50,70,50\nmissing.png,Mass,1,1,5,5\n")
    train = tmp_path / "train_list.txt"
    train.write_text("x2.png 0 0 0\nother.png 0 0 0\n")
    return img_dir, csv, train


def test_benchmark_on_synthetic_set_warns_about_training_images(tmp_path):
    from chexcam.engine import localization

    img_dir, csv, train = _synthetic_boxed_set(tmp_path)
    cfg = chexcam.load_config(CHEST, ["model.name=densenet_tiny", "model.allow_random=true", "device=cpu",
                                      f"output_dir={tmp_path / 'out'}", f"localization.bbox_csv={csv}",
                                      f"localization.images={img_dir}", f"localization.train_list={train}",
                                      "data.resize=64", "data.crop=56"])
    res = localization.eval_localization(cfg)
    assert res["images"] == 3 and res["train_overlap"] == 1
    assert "WARNING: 1 of the 3 boxed images evaluated are in the training split" in res["report"]
    assert res["results"]["Mass"]["n_boxes"] == 1 and res["results"]["Infiltration"]["n_boxes"] == 1
    assert "T(IoBB) = 0.1  Acc." in res["report"] and "Wang et al. 2017" in res["report"]
    saved = open(os.path.join(res["output_dir"], "report.txt")).read()
    assert "WARNING" in saved
    import json

    data = json.load(open(os.path.join(res["output_dir"], "results.json")))
    assert data["results"]["Effusion"]["pointing"] is None  # strict JSON: no NaN
    page = open(res["html"]).read()  # per-image boxes, truth vs predicted
    assert res["html"] == os.path.join(res["output_dir"], "localization.html") and page.count("<li data-finding=") == 4


def test_benchmark_errors_are_one_line(tmp_path):
    from chexcam.engine import localization

    img_dir, csv, _ = _synthetic_boxed_set(tmp_path)
    base = ["model.name=densenet_tiny", "model.allow_random=true", f"output_dir={tmp_path}"]
    with pytest.raises(chexcam.ChexcamError, match="bbox_csv not found"):
        localization.eval_localization(chexcam.load_config(CHEST, base + ["localization.bbox_csv=/nope.csv"]))
    with pytest.raises(chexcam.ChexcamError, match="none of the 4 boxed images"):
        localization.eval_localization(chexcam.load_config(CHEST, base + [f"localization.bbox_csv={csv}",
                                                                   f"localization.images={tmp_path}"]))
    malaria = os.path.join(ROOT, "configs", "malaria.yaml")
    with pytest.raises(chexcam.ChexcamError, match="none of the box findings"):
        localization.eval_localization(chexcam.load_config(malaria, base + [f"localization.bbox_csv={csv}"]))


@pytest.mark.shared_data
@pytest.mark.slow
def test_acceptance_benchmark_on_shared_boxed_images(tmp_path):
    """Acceptance 3: the tool runs on the boxed images among ../shared/data and prints the Wang table."""
    import subprocess
    import sys

    images = shared_path("chestxray14", "images")
    meta = shared_path("chestxray14", "metadata")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "eval_localization.py"), "-q", "-c", CHEST,
           "-o", "model.allow_random=true", "-o", f"output_dir={tmp_path}",
           "-o", f"localization.bbox_csv={meta}/BBox_List_2017.csv", "-o", f"localization.images={images}",
           "-o", f"localization.train_list={meta}/chexnet_split/train_list.txt"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "5 of 880 boxed images, 5 boxes" in out.stdout
    assert "none of the 5 evaluated boxed images is in the training split" in out.stdout
    assert "606 of all 880 in the box list" in out.stdout  # the README's count, recomputed
    assert "Wang et al. 2017 Acc.         0.7277       0.9931" in out.stdout
    assert "Pointing game (hit rate)" in out.stdout
