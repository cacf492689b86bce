"""Export: one hook-free static graph (probabilities + all CAMs) that Paddle Inference runs with the same numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import chexcam
from chexcam.cam.graph import CamGraph
from chexcam.data.io import read_image
from chexcam.data.transforms import eval_transform
from chexcam.engine.export import export_from_config
from chexcam.errors import ChexcamError
from chexcam.serving import Predictor, export_model

from .conftest import ROOT

SAMPLES = os.path.join(ROOT, "data", "chestxray14_sample", "images")


def bundled_batch(cfg):
    tf = eval_transform(cfg)
    files = sorted(f for f in os.listdir(SAMPLES) if f.endswith(".png"))
    return np.stack([tf(read_image(os.path.join(SAMPLES, f)))[0] for f in files])


def dynamic(model, x, **kw):
    """explain on paddle's dynamic graph, the reference of every comparison here."""
    return chexcam.explain(model, x, **kw)


def assert_maps_close(got, ref, rel=1e-5):
    err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err <= rel, f"relative map error {err:.2e} > {rel}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, chest_cfg):
    """The tool's export path on seeded random weights with a non-zero head bias."""
    out = tmp_path_factory.mktemp("export") / "inference"
    paddle.seed(3)
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"),
                              ["model.allow_random=true", f"export.dir={out}", "seed=3"])
    model = chexcam.build_model(cfg)
    model.head.bias.set_value(paddle.linspace(-2, 2, 14))
    summary = {"dir": str(out), **export_model(model, str(out), labels=list(cfg.data.labels))}
    return cfg, model, summary


def test_exported_model_matches_dynamic_graph_on_bundled_images(exported):
    cfg, model, summary = exported
    x = bundled_batch(cfg)
    probs, maps = Predictor(summary["dir"])(x)
    ref_p, ref_m = dynamic(model, x, normalize=False, upsample=False)
    assert probs.shape == (3, 14) and maps.shape == (3, 14, 7, 7)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5, rtol=0)
    assert_maps_close(maps, ref_m)
    # the CAM identity holds inside the exported graph too: mean map + bias = logit
    logits = np.log(probs.astype(np.float64)) - np.log1p(-probs.astype(np.float64))
    np.testing.assert_allclose(maps.mean(axis=(2, 3)) + model.head.bias.numpy(), logits, atol=2e-4)


def test_export_metadata_and_dynamic_shapes(exported):
    cfg, model, summary = exported
    with open(summary["meta"]) as fh:
        meta = json.load(fh)
    assert meta["outputs"] == ["probs", "maps"] and meta["labels"] == list(cfg.data.labels)
    assert meta["input"]["shape"] == [None, 3, None, None]
    x = np.random.default_rng(0).standard_normal((2, 3, 160, 96)).astype("float32")
    probs, maps = Predictor(summary["dir"])(x)
    ref_p, ref_m = dynamic(model, x, normalize=False, upsample=False)
    assert maps.shape == (2, 14, 5, 3)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5, rtol=0)
    assert_maps_close(maps, ref_m)


def test_cam_graph_is_hook_free_and_leaves_the_model_alone(chest_model):
    attrs = {id(m): set(vars(m)) for m in [chest_model, *chest_model.sublayers()]}
    graph = CamGraph(chest_model)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype("float32")
    with paddle.no_grad():
        probs, maps = (t.numpy() for t in graph(paddle.to_tensor(x)))
    ref_p, ref_m = dynamic(chest_model, x, normalize=False, upsample=False)
    np.testing.assert_allclose(probs, ref_p, atol=1e-6)
    assert_maps_close(maps, ref_m, rel=1e-6)
    assert all(not m._forward_post_hooks and not m._forward_pre_hooks for m in [chest_model, *chest_model.sublayers()])
    assert attrs == {id(m): set(vars(m)) for m in [chest_model, *chest_model.sublayers()]}


def test_bad_models_and_folders_are_clear_errors(tmp_path):
    with pytest.raises(ChexcamError, match="cannot export Linear with its CAM"):
        CamGraph(paddle.nn.Linear(3, 2))
    with pytest.raises(ChexcamError, match="no exported model in"):
        Predictor(str(tmp_path))


def test_export_from_config_refuses_missing_weights(tmp_path):
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"), [f"export.dir={tmp_path}/x"])
    with pytest.raises(ChexcamError, match="no model.weights given"):
        export_from_config(cfg)
    assert not os.path.exists(tmp_path / "x")


def test_export_tool_error_is_one_line(tmp_path):
    tool = os.path.join(ROOT, "tools", "export.py")
    res = subprocess.run([sys.executable, tool, "-c", os.path.join(ROOT, "configs", "chestxray14.yaml"),
                          "-o", f"model.weights={tmp_path}/missing.pdparams"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: weights file not found")


def test_onnx_export_matches_paddle(exported, tmp_path):
    pytest.importorskip("paddle2onnx", reason="ONNX export needs the [onnx] extra (paddle2onnx)")
    pytest.importorskip("onnxruntime", reason="the ONNX check needs the [onnx] extra (onnxruntime)")
    from chexcam.serving.onnx import check_onnx, export_onnx

    _, _, summary = exported
    path = export_onnx(summary["dir"], str(tmp_path / "model.onnx"))
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype("float32")
    assert check_onnx(summary["dir"], path, x) < 1e-4
