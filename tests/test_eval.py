"""Evaluation engine and tool: binary metrics and plots, multi-label AUROC table with null for no positives."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import chexcam
from chexcam.engine import evaluate, train
from chexcam.errors import ChexcamError

from .conftest import ROOT
from .test_data import MALARIA, _cell, make_csv_dataset, tiny_overrides

CHEST = os.path.join(ROOT, "configs", "chestxray14.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    csv_path = make_csv_dataset(str(tmp / "d"))
    out = str(tmp / "run")
    train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 2})))
    return csv_path, out


def test_binary_eval_writes_metrics_report_and_plots(trained):
    csv_path, out = trained
    res = evaluate.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out)))
    m = res["metrics"]
    b = m["binary"]
    (tn, fp), (fn, tp) = b["confusion"]
    assert tn + fp + fn + tp == 8 == m["images"] and tp + fn == b["positives"] == 4
    assert b["accuracy"] == pytest.approx((tn + tp) / 8)
    assert m["weights"] == os.path.join(out, "best.pdparams") and m["split"] == "test"
    with open(os.path.join(out, "metrics.json")) as fh:
        assert json.load(fh)["binary"]["confusion"] == b["confusion"]
    for name in ("roc.png", "confusion.png", "reliability.png", "history.png"):  # history: the run's training curves
        img = cv2.imread(os.path.join(out, name))
        assert img is not None and img.shape[0] > 200 and img.std() > 10, name
    report = open(os.path.join(out, "report.md")).read()
    assert "| accuracy |" in report and "confusion.png" in report and res["table"] in report
    assert "history.png" in report and "Expected calibration error" in report
    cal = m["calibration"]
    assert set(cal["ece"]) == {"Parasitized"} and 0 <= cal["ece"]["Parasitized"] <= 1
    assert sum(b["count"] for b in cal["bins"]["Parasitized"]) == 8
    page = open(res["report_html"]).read()
    assert res["report_html"] == os.path.join(out, "report.html") and page.count("data:image/png;base64,") == 4
    assert "Confusion matrix" in page and "AUROC (95% CI)" in page


def test_eval_tool_prints_table_and_missing_weights_is_one_line(trained, tmp_path):
    csv_path, out = trained
    args = [sys.executable, os.path.join(ROOT, "tools", "eval.py"), "-c", MALARIA, "-q"]
    for o in tiny_overrides(csv_path, out):
        args += ["-o", o]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| accuracy |" in proc.stdout and out in proc.stdout
    args[-1] = f"output_dir={tmp_path / 'empty'}"
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "best.pdparams" in proc.stderr and "Traceback" not in proc.stderr


def test_multilabel_table_null_auroc_for_class_without_positives(tmp_path):
    """Three findings; Hernia never occurs: null AUROC with a note, the mean over the other two."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = ["path,Atelectasis,Effusion,Hernia,split"]
    for i in range(24):
        split = ("train", "val", "test")[i % 3]
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), _cell(rng, i % 2 == 0, 40))
        rows.append(f"img/{i}.png,{i % 2},{(i // 2) % 2},0,{split}")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    over = tiny_overrides(str(tmp_path / "d.csv"), str(tmp_path / "run"), **{
        "data.labels": "[Atelectasis, Effusion, Hernia]", "model.num_classes": 3, "data.resize": 40,
        "data.crop": 32, "data.resize_mode": "shorter", "train.epochs": 1, "eval.ten_crop": "true"})
    cfg = chexcam.load_config(MALARIA, over)
    train.run(cfg)
    res = evaluate.run(cfg)
    m = res["metrics"]
    rows = {r["label"]: r for r in m["per_class"]}
    assert rows["Hernia"]["auroc"] is None and rows["Hernia"]["positives"] == 0
    assert any("Hernia" in n and "no positives" in n for n in m["notes"])
    assert rows["Atelectasis"]["auroc"] is not None
    assert m["mean_auroc"] == pytest.approx(np.mean([rows["Atelectasis"]["auroc"], rows["Effusion"]["auroc"]]))
    assert rows["Atelectasis"]["chexnet_paper"] == pytest.approx(0.8094)
    assert rows["Hernia"]["chexnet_paper"] == pytest.approx(0.9164) and m["ten_crop"] is True
    with open(os.path.join(str(tmp_path / "run"), "metrics.json")) as fh:
        assert json.load(fh)["per_class"][2]["auroc"] is None  # JSON null, not 0
    assert "| Hernia | 0 | null |" in res["table"] and "**mean**" in res["table"]
    assert os.path.isfile(os.path.join(str(tmp_path / "run"), "roc.png"))


def test_eval_needs_weights(tmp_path):
    cfg = chexcam.load_config(MALARIA, [f"output_dir={tmp_path}"])
    with pytest.raises(ChexcamError, match="best.pdparams"):
        evaluate.run(cfg)
