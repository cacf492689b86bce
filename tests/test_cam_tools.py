"""Every registered CAM method through the tools: infer_cam (records, mosaics, viewer), the app's explainer,
compare_methods --methods all, and the config's method options."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import chexcam
from chexcam.cam import list_cam_methods
from chexcam.engine import infer

from .conftest import ROOT

CHEST = os.path.join(ROOT, "configs", "chestxray14.yaml")
MALARIA = os.path.join(ROOT, "configs", "malaria.yaml")
IMAGES = os.path.join(ROOT, "data", "chestxray14_sample", "images")
TINY = ["model.name=densenet_tiny", "model.output_stride=8", "model.allow_random=true", "device=cpu", "data.resize=64",
        "data.crop=56", "infer.tile=48", "methods.sscam.num_samples=2", "methods.iscam.steps=2",
        "methods.smoothgradcampp.num_samples=2", "methods.scorecam.batch_size=128", "lime.num_samples=20"]
CAM_FAMILY = [m for m in list_cam_methods() if m != "lime"]


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    for name in sorted(os.listdir(IMAGES))[:2]:
        os.symlink(os.path.join(IMAGES, name), folder / name)
    return str(folder)


@pytest.mark.parametrize("method", list_cam_methods())
def test_infer_cam_writes_records_and_viewer_for_every_method(tmp_path, two_images, method):
    cfg = chexcam.load_config(CHEST, TINY + [f"output_dir={tmp_path}", f"cam.method={method}",
                                             f"infer.input={two_images}", "infer.batch_size=2"])
    summary = infer.run(cfg, workers=0)
    assert summary["images"] == 2
    out = summary["output_dir"]
    records = [f for f in os.listdir(out) if f.endswith(".json") and f != "summary.json"]
    assert len(records) == 2
    rec = json.load(open(os.path.join(out, records[0])))
    assert len(rec["classes"]) == 14 and all(0 <= c["probability"] <= 1 for c in rec["classes"].values())
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert method in page
    assert any(f.endswith("_cam.png") for f in os.listdir(out))


def test_method_options_come_from_the_config(tmp_path):
    model = chexcam.create_model("densenet_tiny", num_classes=14, output_stride=8)
    cfg = chexcam.load_config(CHEST, TINY + [f"output_dir={tmp_path}", "cam.method=sscam", "methods.sscam.std=0.5",
                                             "cam.aug_smooth=true"])
    assert infer.method_config(cfg, "sscam") == {"aug_smooth": True, "eigen_smooth": False, "fusion": "mean",
                                                 "batch_size": 32, "num_samples": 2, "std": 0.5, "seed": 0}
    ex = infer.explainer_from_config(cfg, model)
    assert ex.method == "sscam" and ex.options["std"] == 0.5 and ex.options["aug_smooth"] is True
    cfg = chexcam.load_config(CHEST, TINY + ["cam.method=gradcam", "cam.layers=[backbone.dense_block_func_list.2, "
                                                                   "backbone.batch_norm]", "cam.fusion=layercam"])
    ex = infer.explainer_from_config(cfg, model)
    x = np.random.default_rng(0).standard_normal((1, 3, 56, 56)).astype("float32")
    _, maps = ex(x, normalize=False, upsample=False)
    assert maps.shape == (1, 14, 56, 56)  # fused at the input size
    with pytest.raises(chexcam.ConfigError, match="methods.iscam.steps"):
        chexcam.load_config(CHEST, ["methods.iscam.steps=0"])
    with pytest.raises(chexcam.ConfigError, match="cam.layer and cam.layers"):
        chexcam.load_config(CHEST, ["cam.layer=backbone", "cam.layers=[backbone]"])
    with pytest.raises(chexcam.ConfigError, match="unknown key 'methods.sscam.stdev'"):
        chexcam.load_config(CHEST, ["methods.sscam.stdev=1"])


def test_unknown_method_in_a_tool_is_one_line_listing_the_registered_ones(tmp_path, two_images):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "infer_cam.py"), "-c", CHEST,
                           "-o", "model.allow_random=true", "-o", f"output_dir={tmp_path}", "-o", "cam.method=scorcam",
                           "-o", f"infer.input={two_images}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "scorcam" in err[0] and "scorecam" in err[0] and "ablationcam" in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_app_explains_with_every_method(tmp_path):
    pytest.importorskip("gradio")
    from chexcam.engine.app import XrayApp

    cfg = chexcam.load_config(CHEST, TINY + [f"output_dir={tmp_path}"])
    app = XrayApp(cfg)
    assert set(CAM_FAMILY) <= set(app.methods)
    data = open(os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0]), "rb").read()
    for method in ("scorecam", "layercam", "eigencam"):
        result = app.explain_bytes(data, "x.png", method)
        assert result.record["method"] == method


def test_compare_methods_all(tmp_path):
    from chexcam.engine import compare

    cfg = chexcam.load_config(MALARIA, ["model.name=densenet_tiny", "model.allow_random=true", f"output_dir={tmp_path}",
                                        "infer.batch_size=4", "methods.sscam.num_samples=2", "methods.iscam.steps=2",
                                        "methods.smoothgradcampp.num_samples=2"])
    res = compare.compare_methods(cfg, list_cam_methods(), limit=2, lime_options={"num_samples": 30}, progress=False)
    for m in list_cam_methods():
        r = res["methods"][m]
        assert r["cases"] == 2 and r["ms_per_image"] > 0 and 0 <= r["deletion_auc"] <= 1, m
        assert 0 <= r["stain_within_4px"] <= r["stain_within_8px"] <= 1
    assert res["engines"]["scorecam"] == "predictor" and res["engines"]["ablationcam"] == "dynamic"
    report = open(os.path.join(res["output_dir"], "report.md"), encoding="utf-8").read()
    assert all(f"| {m} |" in report for m in list_cam_methods())
    # at the head's layer these are CAM up to a positive scale: the same ranking, the same scores
    for m in ("gradcam", "hirescam", "xgradcam", "shapleycam"):
        assert res["methods"][m]["deletion_auc"] == pytest.approx(res["methods"]["cam"]["deletion_auc"], abs=1e-6)


def test_the_readme_methods_example_runs_as_written(chest_model):
    """The code block of the README's "Every CAM method" section, on random weights and one small image."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("### Every CAM method, every class in one call", 1)[1]
    block = section.split("```python", 1)[1].split("```", 1)[0]
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype("float32")
    scope = {"chexcam": chexcam, "model": chest_model, "x": x}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102  (the project's own README)
    assert scope["maps"].shape == (1, 14, 64, 64) and scope["ex"].engine == "predictor"
