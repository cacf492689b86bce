"""notebooks/train_malaria.ipynb and notebooks/chestxray14.ipynb run top to bottom on the bundled data (nbclient),
made seconds-long through their parameters (environment variables): a tiny model, one short epoch."""

import json
import os
import re

import pytest

from .conftest import ROOT


def _execute(name, tmp_path, monkeypatch, env):
    nbformat = pytest.importorskip("nbformat", reason="executing notebooks needs nbformat (the [test] extra)")
    nbclient = pytest.importorskip("nbclient", reason="executing notebooks needs nbclient (the [test] extra)")
    pytest.importorskip("ipykernel", reason="executing notebooks needs ipykernel (the [test] extra)")
    monkeypatch.delenv("CHEXCAM_WEIGHTS", raising=False)
    monkeypatch.setenv("CHEXCAM_CACHE_DIR", str(tmp_path / "cache"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    path = os.path.join(ROOT, "notebooks", name)
    nb = nbformat.read(path, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)  # papermill-style parameters cell
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outs)
    images = sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outs)
    return text, images


def _viewer_images(index):
    html = open(index, encoding="utf-8").read()
    return json.loads(re.search(r'id="chexcam-data">(.*?)</script>', html, re.S).group(1))["images"]


@pytest.mark.slow
def test_train_malaria_notebook_executes(tmp_path, monkeypatch):
    out = tmp_path / "malaria"
    text, images = _execute("train_malaria.ipynb", tmp_path, monkeypatch, {
        "CHEXCAM_NB_EPOCHS": "1", "CHEXCAM_NB_OUTPUT": str(out),
        "CHEXCAM_NB_OVERRIDES": "model.name=densenet_tiny data.resize=48 data.crop=48 train.max_steps_per_epoch=4 "
                                "eval.bootstrap=50 infer.tile=64"})
    assert "epochs done: 1" in text and "| accuracy |" in text and "cells explained; viewer:" in text
    assert images >= 4  # history, confusion, reliability, CAMs of held-out cells
    for name in ("history.jsonl", "report.html", "reliability.png", "best.pdparams"):
        assert (out / name).is_file(), name
    cells = _viewer_images(out / "cam" / "index.html")
    assert len(cells) == int(re.search(r"(\d+) cells explained", text).group(1)) > 20
    assert {c["m"] for c in cells} == {"heat"} and all(c["t"] is not None for c in cells)


@pytest.mark.slow
def test_chestxray14_notebook_executes_on_the_bundled_images(tmp_path, monkeypatch):
    out = tmp_path / "cxr"
    text, images = _execute("chestxray14.ipynb", tmp_path, monkeypatch, {
        "CHEXCAM_NB_OUTPUT": str(out), "CHEXCAM_CXR_ROOT": os.path.join(ROOT, "data", "chestxray14_sample"),
        "CHEXCAM_NB_OVERRIDES": "model.name=densenet_tiny model.output_stride=8 data.resize=64 data.crop=56 "
                                "eval.bootstrap=50 infer.tile=64"})
    assert "3 images from" in text and "RANDOM weights (demo only)" in text and "mean AUROC:" in text
    assert images >= 2  # ROC curves and a mosaic
    report = (out / "report.html").read_text()
    assert "AUROC per finding" in report and report.count("data:image/png;base64,") == 2
    assert (out / "random_demo.pdparams").is_file()
    cells = _viewer_images(out / "cam" / "index.html")
    assert sorted(c["s"] for c in cells) == ["00000001_000", "00000003_000", "00001369_000"]
    by = {c["s"]: c for c in cells}
    from chexcam.labels import CHESTXRAY14_LABELS

    assert by["00000003_000"]["t"][list(CHESTXRAY14_LABELS).index("Hernia")] == 1  # ground truth from labels.csv
