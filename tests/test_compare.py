"""tools/compare_methods.py and the stain rule: every method on one model, one table, honest figures."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import chexcam
from chexcam.data.io import read_image
from chexcam.data.transforms import SquareEvalTransform
from chexcam.labels import IMAGENET_MEAN, IMAGENET_STD
from chexcam.metrics import stain as S

from .conftest import ROOT

CELLS = os.path.join(ROOT, "data", "malaria", "cell_images")


def _views(cls):
    tf = SquareEvalTransform(96, 96, IMAGENET_MEAN, IMAGENET_STD)
    return [tf.geometry_and_crop(read_image(f))[0] for f in sorted(glob.glob(os.path.join(CELLS, cls, "*.png")))]


def test_stain_rule_on_the_bundled_cells():
    """The figures the stain module documents: stain in >= 90% of parasitized cells, <= 8% of uninfected ones,
    and a small share of each parasitized cell (a spot, not the cell)."""
    para = [S.stain_mask(v) for v in _views("Parasitized")]
    unin = [S.stain_mask(v) for v in _views("Uninfected")]
    found_p = np.mean([m.sum() >= S.MIN_PIXELS for m in para])
    found_u = np.mean([m.sum() >= S.MIN_PIXELS for m in unin])
    assert found_p >= 0.9 and found_u <= 0.08, (found_p, found_u)
    share = np.median([m.sum() / S.cell_mask(v).sum() for m, v in zip(para, _views("Parasitized"))])
    assert 0.002 < share < 0.1


def test_stain_rule_and_metrics_on_a_drawn_cell():
    img = np.zeros((96, 96, 3), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    cell = (yy - 48) ** 2 + (xx - 48) ** 2 < 40 ** 2
    img[cell] = (230, 170, 180)  # pink cytoplasm
    spot = (yy - 30) ** 2 + (xx - 60) ** 2 < 4 ** 2
    img[spot] = (120, 40, 150)  # dark purple chromatin
    mask = S.stain_mask(img)
    assert mask[spot].mean() > 0.9 and not mask[cell & ~spot].any()
    # pointing: the peak pixel's distance to the spot
    assert S.stain_pointing((60.5, 30.5), mask) == {4.0: True, 8.0: True}
    assert S.stain_pointing((60.5, 40.5), mask) == {4.0: False, 8.0: True}  # 10 px from the centre, 6 from the rim
    assert S.stain_pointing((10.5, 10.5), mask) == {4.0: False, 8.0: False}
    assert S.box_stain_share([[56, 26, 64, 34]], mask) == pytest.approx(mask[26:34, 56:64].mean())
    assert np.isnan(S.box_stain_share([], mask))
    assert S.scaled_tolerances(128) == pytest.approx((4 * 128 / 96, 8 * 128 / 96))
    dark_grey = img.copy()
    dark_grey[spot] = (110, 110, 110)  # as dark, but grey: b* not bluer than the pink cell
    assert not S.stain_mask(dark_grey)[spot].any()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from chexcam.engine import compare

    out = tmp_path_factory.mktemp("compare")
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "malaria.yaml"),
                              ["model.name=densenet_tiny", "model.allow_random=true", f"output_dir={out}",
                               "infer.batch_size=4"])
    return cfg, compare.compare_methods(cfg, limit=4, lime_options={"num_samples": 40}, progress=False)


def test_compare_methods_writes_one_table_for_every_method(compared):
    cfg, res = compared
    methods = res["methods"]
    assert list(methods) == ["cam", "gradcam", "gradcampp", "lime", "centre (baseline)"]
    assert res["images"] == 4 and res["cases"] == 4  # the first four parasitized cells, one class each
    for m in ("cam", "gradcam", "gradcampp", "lime"):
        r = methods[m]
        assert r["cases"] == 4 and r["ms_per_image"] > 0
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
        assert 0 <= r["average_drop"] <= 100 and 0 <= r["increase_in_confidence"] <= 100
        assert r["stain_n"] == methods["centre (baseline)"]["stain_n"] >= 1  # cells with stain, for every row
        assert 0 <= r["stain_within_4px"] <= r["stain_within_8px"] <= 1
        # both curves pass through the probability of the unchanged image (an identity, not a range)
        d, i = (np.array(res["curves"][m][c]) for c in ("deletion", "insertion"))
        assert d[0] == pytest.approx(i[-1], abs=1e-6)
    assert res["engines"]["cam"] == "predictor" and res["engines"]["lime"] == "predictor"
    # CAM and Grad-CAM on the last layer of a GAP + Linear head are the same map up to a positive scale
    for key in ("deletion_auc", "insertion_auc", "stain_within_4px", "stain_within_8px"):
        assert methods["cam"][key] == pytest.approx(methods["gradcam"][key], abs=1e-6)
    folder = res["output_dir"]
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
        assert json.load(fh)["methods"]["lime"]["cases"] == 4
    report = open(os.path.join(folder, "report.md"), encoding="utf-8").read()
    assert "| lime |" in report and "| centre (baseline) |" in report and "of stain (at 96 px)" in report
    assert os.path.isfile(os.path.join(folder, "curves.png"))  # matplotlib comes with lime in [test]


def test_tool_help_and_bad_arguments_are_one_line():
    tool = os.path.join(ROOT, "tools", "compare_methods.py")
    ok = subprocess.run([sys.executable, tool, "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "--lime" in ok.stdout
    bad = subprocess.run([sys.executable, tool, "-c", os.path.join(ROOT, "configs", "malaria.yaml"),
                          "--lime", "num_samples"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "KEY=VALUE" in bad.stderr
