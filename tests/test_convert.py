"""Weight conversion without torch: the release's legacy file, Paddle layouts, error lists, no partial files, the tool."""

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import paddle
import pytest

import chexcam
from chexcam.convert import convert_file, detect_format
from chexcam.errors import WeightsError
from chexcam.weights import load_weights

from .conftest import ROOT
from .test_serialization import FakeStorage, FakeTensor, write_evil, write_legacy

# paddle.vision structured name -> PaddleClas parameter name (the Paddle reproduction's ParamAttr names)
_BN = {"weight": "bn_scale", "bias": "bn_offset", "_mean": "bn_mean", "_variance": "bn_variance"}


def _paddleclas_name(key):
    key = key.replace("backbone.", "")
    if key.startswith("head."):
        return "fc_weights" if key.endswith("weight") else "fc_offset"
    leaf = key.rsplit(".", 1)[1]
    suffix = "weights" if "._conv." in key else _BN[leaf]
    if key.startswith("conv1_func."):
        return f"conv1_{suffix}"
    if key.startswith("batch_norm."):
        return f"conv5_blk_{suffix}"
    m = re.match(r"db_conv_(\d+)\.conv\d+_(\d+)\.bn_ac_func([12])\.", key)
    if m:
        return f"conv{m.group(1)}_{m.group(2)}_x{m.group(3)}_{suffix}"
    m = re.match(r"tr_conv(\d+)_blk\.", key)
    return f"conv{m.group(1)}_blk_{suffix}"


@pytest.fixture(scope="module")
def reference():
    """A seeded chexcam model with non-trivial BatchNorm statistics, and its state as numpy."""
    paddle.seed(7)
    model = chexcam.create_model("chexnet_densenet121", num_classes=14)
    rng = np.random.default_rng(7)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for k in state:
        if k.endswith("_variance"):
            state[k] = (0.5 + rng.random(state[k].shape)).astype("float32")
        elif k.endswith("_mean"):
            state[k] = (0.1 * rng.standard_normal(state[k].shape)).astype("float32")
    return state


def _paddle_chexnet_state(reference):
    """Format (c): what paddle.Model.save writes for Paddle-CheXNet's CheXNet (densenet121.* , head out.0)."""
    out = {}
    for k, v in reference.items():
        k = k.replace("backbone.", "densenet121.").replace("head.", "densenet121.out.0.")
        out[k] = paddle.to_tensor(v)
    return out


def _assert_same(path, reference):
    model = chexcam.create_model("chexnet_densenet121", num_classes=14)
    load_weights(model, str(path))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), reference[k], err_msg=k)


def test_paddle_reproduction_layout(tmp_path, reference):
    paddle.save(_paddle_chexnet_state(reference), str(tmp_path / "best_model.pdparams"))
    report = convert_file(str(tmp_path / "best_model.pdparams"), str(tmp_path / "out.pdparams"))
    assert report["source_format"] == "paddle" and report["stripped_prefix"] == "densenet121."
    assert report["tensors"] == len(reference) and not report["ignored"]
    _assert_same(tmp_path / "out.pdparams", reference)
    with open(tmp_path / "out.convert.json") as fh:
        saved = json.load(fh)
    assert saved["source_sha256"] == report["source_sha256"] and len(saved["source_sha256"]) == 64
    rec = next(r for r in saved["mapping"] if r["target"] == "head.weight")
    assert rec == {"source": "densenet121.out.0.weight", "target": "head.weight", "transform": "none",
                   "source_shape": [1024, 14], "target_shape": [1024, 14]}


def test_paddleclas_parameter_names(tmp_path, reference):
    state = {_paddleclas_name(k): paddle.to_tensor(v) for k, v in reference.items()}
    assert len(state) == len(reference)
    paddle.save(state, str(tmp_path / "pc.pdparams"))
    convert_file(str(tmp_path / "pc.pdparams"), str(tmp_path / "out.pdparams"))
    _assert_same(tmp_path / "out.pdparams", reference)


def test_renamed_key_is_named_and_nothing_is_written(tmp_path, reference):
    state = _paddle_chexnet_state(reference)
    key = "densenet121.db_conv_3.conv3_4.bn_ac_func2._batch_norm._variance"
    state["densenet121.db_conv_3.conv3_4.bn_ac_func2._batch_norm._var"] = state.pop(key)
    paddle.save(state, str(tmp_path / "bad.pdparams"))
    with pytest.raises(WeightsError, match=r"densenet121\.db_conv_3\.conv3_4\.bn_ac_func2\._batch_norm\._var\b"):
        convert_file(str(tmp_path / "bad.pdparams"), str(tmp_path / "out.pdparams"))
    assert os.listdir(tmp_path) == ["bad.pdparams"]


def test_missing_and_misshaped_keys_are_listed(tmp_path, reference):
    state = _paddle_chexnet_state(reference)
    del state["densenet121.batch_norm._mean"]
    paddle.save(state, str(tmp_path / "missing.pdparams"))
    with pytest.raises(WeightsError, match=r"1 chexnet_densenet121 parameters have no source key: "
                                           r"backbone\.batch_norm\._mean"):
        convert_file(str(tmp_path / "missing.pdparams"), str(tmp_path / "out.pdparams"))
    state = _paddle_chexnet_state(reference)
    state["densenet121.tr_conv3_blk.conv_ac_func._conv.weight"] = paddle.zeros([256, 512, 3, 3])
    paddle.save(state, str(tmp_path / "shape.pdparams"))
    with pytest.raises(WeightsError, match=r"wrong shape: densenet121\.tr_conv3_blk\.conv_ac_func\._conv\.weight "
                                           r"\[256, 512, 3, 3\]"):
        convert_file(str(tmp_path / "shape.pdparams"), str(tmp_path / "out.pdparams"))
    with pytest.raises(WeightsError, match="14-class head .* model.num_classes is 3"):
        convert_file(str(tmp_path / "missing.pdparams"), str(tmp_path / "out.pdparams"), num_classes=3)
    assert not os.path.exists(tmp_path / "out.pdparams")


def test_unknown_layouts_and_files(tmp_path):
    with pytest.raises(WeightsError, match="unrecognised checkpoint layout"):
        detect_format(["encoder.layer1.weight"])
    with pytest.raises(WeightsError, match="checkpoint not found"):
        convert_file(str(tmp_path / "nope.pth"), str(tmp_path / "out.pdparams"))
    w = paddle.zeros([64, 3, 7, 7])  # torchvision names in a paddle file: the layout, not the container, counts
    paddle.save({"features.conv0.weight": w, "module.features.conv0.weight": w}, str(tmp_path / "dup.pdparams"))
    with pytest.raises(WeightsError, match=r"1 source keys duplicate others.*features\.conv0\.weight"):
        convert_file(str(tmp_path / "dup.pdparams"), str(tmp_path / "out.pdparams"))
    assert not os.path.exists(tmp_path / "out.pdparams")


def test_tool_converts_and_reports_errors_in_one_line(tmp_path, reference):
    paddle.save(_paddle_chexnet_state(reference), str(tmp_path / "src.pdparams"))
    tool = os.path.join(ROOT, "tools", "convert_weights.py")
    cfg = os.path.join(ROOT, "configs", "chestxray14.yaml")
    ok = subprocess.run([sys.executable, tool, "-c", cfg, "-q", "--src", str(tmp_path / "src.pdparams"),
                         "--out", str(tmp_path / "w.pdparams")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "paddle ->" in ok.stdout and os.path.isfile(tmp_path / "w.convert.json")
    bad = subprocess.run([sys.executable, tool, "-c", cfg, "--src", str(tmp_path / "missing.pth"),
                          "--out", str(tmp_path / "x.pdparams")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: checkpoint not found")


def _release_name(key):
    """chexcam name -> the CheXNet release's name (torchvision < 0.4 spelling, DataParallel prefix)."""
    bn = {"weight": "weight", "bias": "bias", "_mean": "running_mean", "_variance": "running_var"}
    leaf = key.rsplit(".", 1)[1]
    if key.startswith("head."):
        return f"module.densenet121.classifier.0.{leaf}"
    m = re.match(r"backbone\.db_conv_(\d+)\.conv\d+_(\d+)\.bn_ac_func([12])\.(_conv|_batch_norm)\.", key)
    if m:
        b, lyr, i, kind = m.groups()
        part = f"conv.{i}.weight" if kind == "_conv" else f"norm.{i}.{bn[leaf]}"
        return f"module.densenet121.features.denseblock{int(b) - 1}.denselayer{lyr}.{part}"
    m = re.match(r"backbone\.tr_conv(\d+)_blk\.conv_ac_func\.(_conv|_batch_norm)\.", key)
    if m:
        part = "conv.weight" if m.group(2) == "_conv" else f"norm.{bn[leaf]}"
        return f"module.densenet121.features.transition{int(m.group(1)) - 1}.{part}"
    stem = "conv0" if key.startswith("backbone.conv1_func._conv") else \
        "norm0" if key.startswith("backbone.conv1_func") else "norm5"
    return f"module.densenet121.features.{stem}.{'weight' if stem == 'conv0' else bn[leaf]}"


def _write_release(path, reference):
    """The 2017 release's file as torch 0.3 wrote it (legacy format, CUDA storages), built without torch.

    The head is stored the way a transposed torch tensor is: paddle's [C, K] bytes with strides (1, K).
    """
    state = OrderedDict()
    for i, (key, value) in enumerate(reference.items()):
        storage = FakeStorage(value, "FloatStorage", str(94000000 + i), module="torch.cuda", location="cuda:0")
        if key == "head.weight":
            tensor = FakeTensor(storage, 0, value.shape[::-1], (1, value.shape[1]), v2=False)
        else:
            tensor = FakeTensor(storage, 0, value.shape, [int(s) // 4 for s in value.strides], v2=False)
        state[_release_name(key)] = tensor
    write_legacy(path, {"epoch": 9, "arch": "densenet121", "state_dict": state, "best_loss": 0.1489,
                        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [1, 2]}]}})


def test_release_format_converts_without_torch(tmp_path, reference):
    src = str(tmp_path / "model.pth.tar")
    _write_release(src, reference)
    report = convert_file(src, str(tmp_path / "out.pdparams"))
    assert report["source_format"] == "chexnet_pth" and report["stripped_prefix"] == "module.densenet121."
    assert report["tensors"] == len(reference) and report["num_classes"] == 14
    _assert_same(tmp_path / "out.pdparams", reference)


def test_tool_needs_no_torch_and_has_no_trust_option(tmp_path, reference):
    """The tool in a Python where ``import torch`` fails converts the release; --trust-pickle is gone."""
    src = str(tmp_path / "model.pth.tar")
    _write_release(src, reference)
    tool = os.path.join(ROOT, "tools", "convert_weights.py")
    cfg = os.path.join(ROOT, "configs", "chestxray14.yaml")
    no_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    ok = subprocess.run([sys.executable, "-c", no_torch, tool, "-c", cfg, "-q", "--src", src,
                         "--out", str(tmp_path / "w.pdparams")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "chexnet_pth ->" in ok.stdout
    _assert_same(tmp_path / "w.pdparams", reference)
    old = subprocess.run([sys.executable, tool, "-c", cfg, "--src", src, "--out", str(tmp_path / "x.pdparams"),
                          "--trust-pickle"], capture_output=True, text=True, timeout=300)
    assert old.returncode == 2 and "unrecognized arguments: --trust-pickle" in old.stderr


def test_malicious_sources_are_refused_and_nothing_is_written(tmp_path):
    marker = str(tmp_path / "pwned")
    for fmt in ("legacy", "zip", "pdparams"):
        src = write_evil(str(tmp_path / f"src_{fmt}.pth"), fmt, "builtins.exec", marker)
        with pytest.raises(WeightsError, match=r"refused to load .*: it references builtins\.exec"):
            convert_file(src, str(tmp_path / "out.pdparams"))
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out.pdparams")
