"""The fast CPU CAM path (cached Paddle Inference predictor) and the paddle_inference per-batch explainer."""

import os

import numpy as np
import paddle
import pytest

import chexcam
from chexcam import inference
from chexcam.inference import fast_cam, make_predictor_explainer, set_fast_cam, weights_fingerprint

from .conftest import ROOT
from .test_export import assert_maps_close, bundled_batch, dynamic


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """One export cache for this module, never the user's ~/.cache; the switch back to the environment's."""
    root = tmp_path_factory.getbasetemp() / "chexcam-cache"
    monkeypatch.setenv(inference.CACHE_ENV, str(root))
    monkeypatch.delenv(inference.FAST_CAM_ENV, raising=False)
    set_fast_cam(None)
    yield
    set_fast_cam(None)


@pytest.fixture(scope="module")
def model():
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"), ["model.allow_random=true"])
    paddle.seed(11)
    m = chexcam.build_model(cfg)
    m.head.bias.set_value(paddle.linspace(-1, 1, 14))
    return m


def _probs(logits):
    return 1.0 / (1.0 + np.exp(-logits.numpy().astype(np.float64)))


def _check_fast(model, x, classes=None):
    out = fast_cam(model, x, classes)
    assert out is not None, "fast path declined an eligible call"
    logits, maps = out
    ref_p, ref_m = dynamic(model, x, classes=classes, normalize=False, upsample=False)
    np.testing.assert_allclose(_probs(logits), ref_p, atol=1e-5, rtol=0)
    assert_maps_close(maps.numpy(), ref_m)
    return maps.numpy()


def test_fast_cam_matches_dynamic_graph_on_bundled_images(model, chest_cfg):
    x = bundled_batch(chest_cfg)
    _check_fast(model, x)
    _check_fast(model, paddle.to_tensor(x[:1]))  # tensors and other batch sizes
    maps = _check_fast(model, x, classes=[1, 13])  # class subsets, in the order asked
    assert maps.shape == (3, 2, 7, 7)


def test_fast_cam_any_input_size(model):
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 160)).astype("float32")
    assert _check_fast(model, x).shape == (2, 14, 3, 5)


def test_cache_follows_weight_changes(model, chest_cfg):
    x = bundled_batch(chest_cfg)[:2]
    before = weights_fingerprint(model)
    bias = model.head.bias.numpy().copy()
    try:
        model.head.bias.set_value(bias + 3.0)  # set_value does not bump paddle's inplace version
        assert weights_fingerprint(model) != before
        _check_fast(model, x)
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        w = state["backbone.batch_norm._variance"].copy()
        state["backbone.batch_norm._variance"] = w * 2.0  # a BN buffer, loaded in place
        model.set_state_dict(state)
        _check_fast(model, x)
    finally:
        model.head.bias.set_value(bias)
        model.backbone.batch_norm._variance.set_value(w)
    assert weights_fingerprint(model) == before
    _check_fast(model, x)


def test_fingerprint_sees_in_place_and_optimizer_updates():
    m = chexcam.create_model("densenet_tiny", num_classes=2)
    fp = weights_fingerprint(m)
    assert weights_fingerprint(m) == fp
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=m.parameters())
    m.train()
    m(paddle.randn([2, 3, 32, 32])).sum().backward()
    opt.step()  # updates parameters and (train mode) BatchNorm statistics in place
    assert weights_fingerprint(m) != fp


def test_switches_and_ineligible_calls_fall_back(model, monkeypatch):
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype("float32")
    monkeypatch.setenv(inference.FAST_CAM_ENV, "0")
    assert fast_cam(model, x) is None
    monkeypatch.setenv(inference.FAST_CAM_ENV, "1")
    set_fast_cam(False)
    assert fast_cam(model, x) is None
    set_fast_cam(None)
    assert fast_cam(model, x, layer="backbone.conv1_func") is None  # another layer: dynamic graph
    handle = model.backbone.batch_norm.register_forward_post_hook(lambda *a: None)
    try:
        assert fast_cam(model, x) is None  # a user's hook must run: dynamic graph
    finally:
        handle.remove()
    model.train()
    try:
        assert fast_cam(model, x) is None
    finally:
        model.eval()
    assert fast_cam(model, np.zeros((1, 4, 64, 64), "float32")) is None  # the dynamic path raises its error


def test_weights_changing_every_call_settle_on_the_dynamic_graph(monkeypatch):
    monkeypatch.setattr(inference, "MAX_WEIGHT_STATES", 1)
    m = chexcam.create_model("densenet_tiny", num_classes=2)
    m.eval()
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype("float32")
    assert fast_cam(m, x) is not None
    m.head.bias.set_value(paddle.ones([2]))
    assert fast_cam(m, x) is None and fast_cam(m, x) is None


def test_explain_uses_the_fast_path(model, chest_cfg, monkeypatch):
    """Through chexcam.explain: cam goes through the predictor, gradient methods never do."""
    calls = []
    real = inference.PredictorExplainer.run
    monkeypatch.setattr(inference.PredictorExplainer, "run", lambda self, x: calls.append(1) or real(self, x))
    x = bundled_batch(chest_cfg)
    probs, maps = chexcam.explain(model, x)
    assert calls, "chexcam.explain(method='cam') on CPU did not run through the cached predictor"
    ref_p, ref_m = dynamic(model, x)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps, ref_m, atol=1e-5, rtol=0)  # upsampled + min-max normalized, as before
    calls.clear()
    if "gradcam" in chexcam.cam.list_cam_methods():
        chexcam.explain(model, x[:1], method="gradcam")
        assert not calls


def test_predictor_explainer_for_infer_engine(model, chest_cfg):
    """The engine's contract: probabilities and raw maps, ReLU per cam.relu, at the input size."""
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"),
                              ["model.allow_random=true", "cam.relu=true"])
    explainer = make_predictor_explainer(cfg, model)
    x = bundled_batch(chest_cfg)
    probs, maps = explainer(x)
    ref_p, ref_m = dynamic(model, x, normalize=False, relu=True)
    assert maps.shape == (3, 14, 224, 224)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5, rtol=0)
    assert_maps_close(maps, ref_m)
    normalized = make_predictor_explainer(cfg, model, normalize="global")
    _, sub = normalized(x, classes=["Cardiomegaly", 13])
    _, ref_sub = dynamic(model, x, classes=["Cardiomegaly", 13], normalize="global", relu=True)
    np.testing.assert_allclose(sub, ref_sub, atol=1e-5, rtol=0)
    bad = chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"), ["cam.method=gradcam"])
    with pytest.raises(chexcam.ConfigError, match="cam.method=cam only"):
        make_predictor_explainer(bad, model)


@pytest.mark.parametrize("normalize", [True, "global", False])
@pytest.mark.parametrize("upsample", [True, (100, 120), (5, 3), False])
def test_fast_explain_equals_explain(model, normalize, upsample):
    x = np.random.default_rng(5).standard_normal((2, 3, 128, 96)).astype("float32")
    for relu, classes in ((False, None), (True, ["Effusion", 0])):
        got = inference.fast_explain(model, x, "cam", classes, normalize, upsample, relu)
        assert got is not None
        ref = dynamic(model, x, classes=classes, normalize=normalize, upsample=upsample, relu=relu)
        assert got[1].shape == ref[1].shape and got[1].dtype == np.float32
        np.testing.assert_allclose(got[0], ref[0], atol=1e-5, rtol=0)
        if normalize is False:
            assert_maps_close(got[1], ref[1])
        else:
            np.testing.assert_allclose(got[1], ref[1], atol=1e-5, rtol=0)


def test_fast_explain_declines_what_the_dynamic_path_must_answer(model):
    x = np.zeros((1, 3, 64, 64), "float32")
    assert inference.fast_explain(model, x, method="gradcam") is None
    assert inference.fast_explain(model, x, layer="backbone.conv1_func") is None
    assert inference.fast_explain(model, x, normalize="max") is None  # explain raises the usual error
    assert inference.fast_explain(model, x, classes=["Cardio"]) is None
    assert inference.fast_explain(model, x[0]) is None
    assert inference.fast_explain(model, x.astype("float64")) is None
    model.train()
    try:  # explain answers in eval mode whatever the flags: so does the fast path, without touching them
        assert inference.fast_explain(model, x) is not None
        assert model.training and model.backbone.batch_norm.training
    finally:
        model.eval()


def test_postprocess_matches_paddle_ops_including_flat_maps():
    from chexcam.cam.base import normalize_maps

    rng = np.random.default_rng(6)
    maps = rng.standard_normal((2, 3, 7, 5)).astype("float32")
    maps[0, 1] = 4.0  # a constant map normalizes to zeros, never NaN
    for size in ((7, 5), (224, 160), (3, 2)):
        for mode in ("none", "minmax", "global"):
            t = paddle.nn.functional.relu(paddle.to_tensor(maps))
            if size != (7, 5):
                t = paddle.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
            ref = normalize_maps(t, mode).numpy()
            got = inference.postprocess(maps, size, mode, relu=True)
            np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0, err_msg=f"{size} {mode}")
            assert not np.isnan(got).any()
