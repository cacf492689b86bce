"""HTML pages and plots without a browser: the viewer's files and index, heatmaps recovered from mosaics,
report.html, localization.html, calibration error, training curves and the thin tools."""

import json
import logging
import os
import re
import runpy

import cv2
import numpy as np
import pytest

from chexcam import plots, viewer
from chexcam.labels import CHESTXRAY14_LABELS
from chexcam.metrics import calibration as C

from .conftest import ROOT
from .viewer_data import make_infer_folder, make_malaria_folder


def page_data(path):
    text = open(path, encoding="utf-8").read()
    return json.loads(re.search(r'id="chexcam-data">(.*?)</script>', text, re.S).group(1)), text


def test_viewer_index_assets_and_incremental_rebuild(tmp_path):
    out, probs, targets = make_infer_folder(str(tmp_path), n=6)
    index = viewer.write_viewer(out)
    assert index == os.path.join(out, "index.html")
    data, text = page_data(index)
    assert data["labels"] == list(CHESTXRAY14_LABELS) and data["hasTruth"] and len(data["images"]) == 6
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text  # no CDN
    by_stem = {e["s"]: e for e in data["images"]}
    e0, odd = by_stem["img_000"], by_stem["odd name #1"]
    assert e0["m"] == "heat" and odd["m"] == "unblended"  # maps from the npz; recovered from the mosaic
    assert re.fullmatch(r"[A-Za-z0-9._-]+", odd["id"]) and odd["j"] == "odd%20name%20%231.json"
    np.testing.assert_allclose(e0["p"], probs[0], atol=1e-4)
    assert e0["t"] == targets[0].tolist()
    adir = os.path.join(out, viewer.ASSETS)
    strip = cv2.imread(os.path.join(adir, e0["id"] + "_maps.jpg"))
    view = cv2.imread(os.path.join(adir, e0["id"] + ".jpg"))
    assert view.shape == (96, 80, 3) and strip.shape == (14 * 96, 80, 3)  # one tile per class, image-shaped
    js = open(os.path.join(adir, odd["id"] + ".js"), encoding="utf-8").read()
    rec = json.loads(js[js.index(",") + 1:js.rindex(")")])
    assert rec == json.load(open(os.path.join(out, "odd name #1.json")))
    before = os.path.getmtime(os.path.join(adir, e0["id"] + "_maps.jpg"))
    viewer.write_viewer(out)
    assert os.path.getmtime(os.path.join(adir, e0["id"] + "_maps.jpg")) == before  # nothing changed: not redone


def test_heatmap_recovered_from_the_mosaic_matches_the_saved_maps(tmp_path):
    """The same image once with its npz and once with the mosaic only: the heatmap recovered by unblending the
    mosaic tiles equals the one drawn from the maps, except under the tile titles (filled in) and JPEG noise."""
    out, _, _ = make_infer_folder(str(tmp_path), n=1, npz_every=1, tile=96)
    viewer.write_viewer(out)
    adir = os.path.join(out, viewer.ASSETS)
    exact = cv2.imread(os.path.join(adir, "img_000_maps.jpg")).astype(np.float32)
    os.remove(os.path.join(out, "img_000_maps.npz"))
    os.remove(os.path.join(adir, "img_000_maps.jpg"))
    data, _ = page_data(viewer.write_viewer(out))
    assert data["images"][0]["m"] == "unblended"
    rec = cv2.imread(os.path.join(adir, "img_000_maps.jpg")).astype(np.float32)
    tiles_e, tiles_r = np.split(exact, 14), np.split(rec, 14)
    for a, b in zip(tiles_e, tiles_r):
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
        below = slice(a.shape[0] // 4, None)  # under the title band
        assert np.abs(a[below] - b[below]).mean() < 6.0  # ~1.2 seen
    # a wrong alpha gives a visibly different heatmap: the comparison can fail
    cfg = os.path.join(out, "config.yaml")
    text = open(cfg).read()
    assert "alpha: 0.4" in text
    with open(cfg, "w") as fh:
        fh.write(text.replace("alpha: 0.4", "alpha: 0.8"))
    os.remove(os.path.join(adir, "img_000_maps.jpg"))
    viewer.write_viewer(out)
    wrong = np.split(cv2.imread(os.path.join(adir, "img_000_maps.jpg")).astype(np.float32), 14)
    errs = [np.abs(a[a.shape[0] // 4:] - cv2.resize(b, (a.shape[1], a.shape[0]))[a.shape[0] // 4:]).mean()
            for a, b in zip(tiles_e, wrong)]
    assert np.mean(errs) > 20.0  # ~45 seen


def test_viewer_of_an_old_folder_without_config_and_originals(tmp_path):
    out, _, _ = make_infer_folder(str(tmp_path), n=3, npz_every=0, tile=64)
    os.remove(os.path.join(out, "config.yaml"))  # tile size from the mosaic's height (default 256 is wrong)
    for name in os.listdir(os.path.join(str(tmp_path), "src"))[:1]:
        os.remove(os.path.join(str(tmp_path), "src", name))  # an original that moved away
    data, _ = page_data(viewer.write_viewer(out))
    modes = sorted(e["m"] for e in data["images"])
    assert modes == ["mosaic", "unblended", "unblended"] and all(e["o"] for e in data["images"])


def test_binary_viewer_and_empty_folder(tmp_path):
    out, probs, _ = make_malaria_folder(str(tmp_path / "m"), n=4)
    data, _ = page_data(viewer.write_viewer(out))
    assert data["labels"] == ["Parasitized"] and [len(e["p"]) for e in data["images"]] == [1] * 4
    empty = tmp_path / "empty"
    empty.mkdir()
    data, _ = page_data(viewer.write_viewer(str(empty)))
    assert data["images"] == []
    with pytest.raises(viewer.ChexcamError, match="not a folder"):
        viewer.write_viewer(str(tmp_path / "missing"))


@pytest.fixture
def _root_logger():
    """Tools set logging up; put the root logger back for the tests that follow."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


def _tool(name):
    """A tool run in this process through the shared CLI (a subprocess would pay for the imports again)."""
    from chexcam.cli import run_tool

    ns = runpy.run_path(os.path.join(ROOT, "tools", name), run_name="tool")
    config = os.path.join(ROOT, "configs", "malaria.yaml")
    return lambda argv: run_tool(ns["main"], name, argv=["-c", config, *argv], parser=ns["parser"]())


def test_make_viewer_tool(tmp_path, capsys, _root_logger):
    out, _, _ = make_malaria_folder(str(tmp_path), n=2)
    main = _tool("make_viewer.py")
    assert main([out, "-q"]) == 0
    assert capsys.readouterr().out.strip() == os.path.join(out, "index.html")
    assert main([str(tmp_path / "nope"), "-q"]) == 2
    assert capsys.readouterr().err.startswith("error: not a folder")


def test_expected_calibration_error_by_hand():
    # bins of width 0.5: [0.2, 0.4] -> confidence 0.3, 1 positive of 2; [0.6, 0.9, 1.0] -> 0.8333, 3 of 3
    y, p = [0, 1, 1, 1, 1], [0.2, 0.4, 0.6, 0.9, 1.0]
    ece = C.expected_calibration_error(y, p, n_bins=2)
    assert ece == pytest.approx(2 / 5 * abs(0.5 - 0.3) + 3 / 5 * abs(1 - 0.8333333), abs=1e-6)
    rep = C.calibration_report(np.array([[0, np.nan], [1, np.nan]]), np.array([[0.1, 0.5], [0.9, 0.5]]), ["a", "b"])
    assert rep["ece"] == {"a": pytest.approx(0.1), "b": None} and rep["mean_ece"] == pytest.approx(0.1)
    assert sum(b["count"] for b in rep["bins"]["a"]) == 2


def _metrics(k):
    labels = list(CHESTXRAY14_LABELS[:k]) if k > 1 else ["Parasitized"]
    rng = np.random.default_rng(0)
    y = (rng.random((60, k)) < 0.4).astype(float)
    p = np.clip(0.5 * y + 0.5 * rng.random((60, k)), 0, 1)
    return labels, y, p


def test_report_html_multilabel_and_binary_with_embedded_plots(tmp_path):
    labels, y, p = _metrics(3)
    cal = C.calibration_report(y, p, labels)
    plots.save(plots.roc_figure(y, p, labels), str(tmp_path / "roc.png"))
    plots.save(plots.reliability_figure(cal, labels), str(tmp_path / "reliability.png"))
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_mean_auroc": 0.6 + 0.05 * e,
             "val_auroc": {lab: 0.6 for lab in labels}, "lr": 1e-3} for e in (1, 2, 3)]
    with open(tmp_path / "history.jsonl", "w") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    assert plots.history_png(str(tmp_path)) == str(tmp_path / "history.png")
    metrics = {"split": "test", "images": 60, "ci_level": 0.95, "mean_auroc": 0.8, "mean_auroc_ci": [0.7, 0.9],
               "chexnet_paper_mean": 0.84, "calibration": cal, "notes": ["Hernia: no positives <b>"],
               "per_class": [{"label": lab, "model_class": lab, "positives": 20, "auroc": 0.8, "auroc_ci": [0.7, 0.9],
                              "chexnet_paper": 0.8, "f1_threshold": 0.4, "f1": 0.7} for lab in labels]}
    text = open(viewer.write_report_html(str(tmp_path), metrics), encoding="utf-8").read()
    assert text.count("data:image/png;base64,") == 3 and "Reliability diagram" in text and "Training curves" in text
    assert "0.700 &#8211; 0.900" in text and "Hernia: no positives &lt;b&gt;" in text
    assert f"{cal['ece']['Atelectasis']:.3f}" in text
    binary = tmp_path / "bin"
    binary.mkdir()
    labels, y, p = _metrics(1)
    plots.save(plots.confusion_figure([[20, 5], [3, 32]], "Parasitized"), str(binary / "confusion.png"))
    m = {"binary": {"confusion": [[20, 5], [3, 32]], "threshold": 0.5, "n": 60, "positives": 35, "accuracy": 0.87,
                    "precision": 0.86, "recall": 0.91, "f1": 0.88, "auroc": 0.93, "auroc_ci": [0.88, 0.97]},
         "calibration": C.calibration_report(y, p, labels), "split": "test", "images": 60}
    with open(binary / "metrics.json", "w") as fh:
        json.dump(m, fh)
    text = open(viewer.write_report_html(str(binary)), encoding="utf-8").read()  # from metrics.json
    assert "Confusion matrix" in text and "<td>32</td>" in text and "expected calibration error" in text


def test_plot_history_tool(tmp_path, capsys):
    main = _tool("plot_history.py")
    assert main([str(tmp_path)]) == 2 and "no history.jsonl" in capsys.readouterr().err
    (tmp_path / "history.jsonl").write_text('{"epoch": 1, "train_loss": 0.7, "val_loss": 0.6, "lr": 0.001}\n')
    assert main([str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    img = cv2.imread(str(tmp_path / "c.png"))
    assert img is not None and img.shape[1] > 800 and img.std() > 10


def test_localization_page(tmp_path):
    img = np.full((100, 120, 3), 90, np.uint8)
    path = str(tmp_path / "00000001_000.png")
    cv2.imwrite(path, img)
    items = {path: {"Effusion": ([(10, 10, 50, 60)], np.array([[12.0, 14, 48, 58]]), (30.0, 30.0)),
                    "Mass": ([(70, 20, 100, 40)], [], (20.0, 80.0))}}
    html = open(viewer.write_localization_html(str(tmp_path), items, "Localization", ["WARNING: seen"]),
                encoding="utf-8").read()
    assert html.count("<li data-finding=") == 2 and 'data-hit="1"' in html and 'data-hit="0"' in html
    assert "pointing <span class=ok>hit</span>" in html and "WARNING: seen" in html
    assert os.path.isfile(tmp_path / "boxes" / "00000001_000.jpg")
