import os

import numpy as np
import paddle
import pytest

import chexcam
from chexcam.postprocess import normalize_maps

from .conftest import CONFIGS


@pytest.fixture(scope="module")
def _explainers():
    """Explainers built in this module, one per model, method and layer (a DenseNet121 Explainer takes
    seconds to export and check; the tests that share ``chest_model`` share its Explainer, whose snapshot
    contract says it keeps answering for the weights it was built with: no test here changes them)."""
    return {}


@pytest.fixture(params=["explain", "Explainer"])
def explain(request, _explainers):
    """Every test runs on both engines: ``chexcam.explain`` (the reference, dynamic graph) and a
    ``chexcam.Explainer`` on the Paddle Inference predictor."""
    if request.param == "explain":
        return chexcam.explain

    def run(model, x, method="cam", layer=None, **kw):
        key = (id(model), method, layer)
        if key not in _explainers:
            engine = "predictor" if method == "cam" and layer is None else "dynamic"
            # the model is kept with its Explainer so that its id is never reused by another model
            _explainers[key] = (model, chexcam.Explainer(model, method=method, layer=layer, engine=engine))
        return _explainers[key][1](x, **kw)

    return run


def _logits(probs):
    p = probs.astype(np.float64)
    return np.log(p) - np.log1p(-p)


#: the identity on every shipped config through explain; through the Explainer on the two architectures
#: (chexpert and mimic_cxr are chestxray14's DenseNet121 with other class counts; tests/test_explainer.py
#: checks the Explainer against explain on both architectures at output strides 32, 16 and 8)
IDENTITY = [pytest.param(p, e, id=f"{e}-{os.path.basename(p)}") for p in CONFIGS for e in ("explain", "Explainer")
            if e == "explain" or os.path.basename(p) in ("chestxray14.yaml", "malaria.yaml")]


@pytest.mark.parametrize("path,engine", IDENTITY)
def test_cam_identity_spatial_mean_plus_bias_is_logit(path, engine):
    """mean_{x,y} M_c + b_c == logit_c for every image and class (float32, 1e-4 relative)."""
    explain = chexcam.explain if engine == "explain" else \
        (lambda m, x, **kw: chexcam.Explainer(m, engine="predictor")(x, **kw))
    cfg = chexcam.load_config(path, ["model.allow_random=true"])
    paddle.seed(0)
    model = chexcam.build_model(cfg)
    # a non-zero bias so the identity also checks the bias term
    model.head.bias.set_value(paddle.linspace(-0.5, 0.5, cfg.model.num_classes))
    x = np.random.default_rng(0).standard_normal((3, 3, cfg.data.crop, cfg.data.crop)).astype("float32")
    xt = paddle.to_tensor(x)
    with paddle.no_grad():
        logits = model(xt).numpy()
    probs, maps = explain(model, x, normalize=False, upsample=False)
    side = cfg.data.crop // cfg.model.output_stride
    assert maps.shape == (3, cfg.model.num_classes, side, side)
    recon = maps.mean(axis=(2, 3)) + model.head.bias.numpy()
    np.testing.assert_allclose(recon, logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)


def test_acceptance_batch_of_four(chest_model, explain):
    x = np.random.default_rng(1).standard_normal((4, 3, 224, 224)).astype("float32")
    probs, maps = explain(chest_model, x, normalize=False, upsample=False)
    assert maps.shape == (4, 14, 7, 7)
    diff = _logits(probs) - maps.mean(axis=(2, 3))  # the head bias, the same for every image
    np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-4)


def test_hooks_are_removed_and_mode_restored(chest_model):
    layer = chest_model.backbone.batch_norm
    before = len(layer._forward_post_hooks)
    attrs = {id(m): set(vars(m)) for m in [chest_model, *chest_model.sublayers()]}
    chest_model.train()
    chest_model.backbone.conv1_func.eval()  # a user's frozen stem must stay frozen
    try:
        chexcam.explain(chest_model, np.zeros((1, 3, 64, 64), "float32"))
        assert chest_model.training and chest_model.backbone.batch_norm.training
        assert not chest_model.backbone.conv1_func.training
    finally:
        chest_model.eval()
    assert len(layer._forward_post_hooks) == before
    # nothing (feature maps, gradients) is left on any layer after the call
    assert attrs == {id(m): set(vars(m)) for m in [chest_model, *chest_model.sublayers()]}


def test_hook_removed_even_when_forward_fails(chest_model, explain):
    layer = chest_model.backbone.batch_norm
    before = len(layer._forward_post_hooks)
    with pytest.raises(Exception):
        explain(chest_model, np.zeros((1, 4, 64, 64), "float32"))  # 4 channels: conv fails
    assert len(layer._forward_post_hooks) == before


def test_no_cam_work_in_training_forward(chest_model):
    layer = chest_model.backbone.batch_norm
    assert len(layer._forward_post_hooks) == 0
    assert len(chest_model._forward_post_hooks) == 0 and len(chest_model._forward_pre_hooks) == 0


def test_explain_is_repeatable_and_accepts_tensors(chest_model, explain):
    x = np.random.default_rng(2).standard_normal((2, 3, 96, 96)).astype("float32")
    a = explain(chest_model, x)
    b = explain(chest_model, x)
    c = explain(chest_model, paddle.to_tensor(x))
    for u, v in ((a, b), (a, c)):
        np.testing.assert_array_equal(u[0], v[0])
        np.testing.assert_array_equal(u[1], v[1])


def test_class_selection_by_index_and_name(chest_model, explain):
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype("float32")
    _, full = explain(chest_model, x, normalize=False, upsample=False)
    probs, sub = explain(chest_model, x, classes=["Cardiomegaly", 13], normalize=False, upsample=False)
    assert probs.shape == (2, 14) and sub.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(sub, full[:, [1, 13]], rtol=1e-6, atol=1e-6)
    with pytest.raises(chexcam.ChexcamError, match="unknown class 'Cardio'"):
        explain(chest_model, x, classes=["Cardio"])
    with pytest.raises(chexcam.ChexcamError, match="out of range"):
        explain(chest_model, x, classes=[14])


def test_upsampled_and_normalized_maps(chest_model, explain):
    x = np.random.default_rng(4).standard_normal((2, 3, 224, 224)).astype("float32")
    _, raw = explain(chest_model, x, normalize=False, upsample=False)
    _, mm = explain(chest_model, x, normalize="minmax")
    _, gl = explain(chest_model, x, normalize="global")
    _, up = explain(chest_model, x, normalize=False, upsample=(100, 120))
    assert mm.shape == gl.shape == (2, 14, 224, 224) and up.shape == (2, 14, 100, 120)
    np.testing.assert_allclose(mm.max(axis=(2, 3)), 1.0, atol=1e-6)
    np.testing.assert_allclose(mm.min(axis=(2, 3)), 0.0, atol=1e-6)
    # global: one scale per image -- only the overall extreme reaches 1 and 0
    np.testing.assert_allclose(gl.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
    assert (gl.max(axis=(2, 3)) < 1.0 - 1e-3).any()
    # the per-image order of class maxima follows the raw maps' maxima
    for b in range(2):
        assert np.argmax(gl[b].max(axis=(1, 2))) == np.argmax(raw[b].max(axis=(1, 2)))
    _, relu = explain(chest_model, x, normalize=False, upsample=False, relu=True)
    np.testing.assert_array_equal(relu, np.maximum(raw, 0))


@pytest.mark.parametrize("mode", ["minmax", "global"])
def test_constant_maps_normalize_to_zero_not_nan(mode):
    maps = np.full([2, 3, 5, 5], 7.0, np.float32)
    out = normalize_maps(maps, mode)
    assert not np.isnan(out).any() and (out == 0).all()


def test_bad_inputs_are_clear_errors(chest_model, explain):
    with pytest.raises(chexcam.ChexcamError, match=r"\[B, C, H, W\]"):
        explain(chest_model, np.zeros((3, 64, 64), "float32"))
    with pytest.raises(chexcam.ChexcamError, match="CAM method"):
        explain(chest_model, np.zeros((1, 3, 64, 64), "float32"), method="camm")
    with pytest.raises(chexcam.ChexcamError, match="normalization"):
        explain(chest_model, np.zeros((1, 3, 64, 64), "float32"), normalize="max")
    with pytest.raises(chexcam.ChexcamError, match="no layer"):
        explain(chest_model, np.zeros((1, 3, 64, 64), "float32"), layer="backbone.nope")
