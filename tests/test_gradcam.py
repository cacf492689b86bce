"""Grad-CAM and Grad-CAM++: identities, any-layer/any-head support, and the hook/mode guarantees."""

import numpy as np
import paddle
import pytest
from paddle import nn

import chexcam
from chexcam.cam import list_cam_methods
from chexcam.registry import CAM_METHODS


class PlainNet(nn.Layer):
    """A Keras/MNIST-style net: convolutions, then flatten and dense layers (no GAP, no 'head')."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2D(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2),
                                      nn.Conv2D(8, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def tiny():
    paddle.seed(0)
    model = chexcam.create_model("densenet_tiny", num_classes=3, output_stride=8)
    model.head.bias.set_value(paddle.to_tensor([0.3, -0.2, 0.1]))
    model.eval()
    return model


def _x(seed, shape=(3, 3, 64, 64)):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_registry_has_the_three_methods():
    assert {"cam", "gradcam", "gradcampp"} <= set(list_cam_methods())


@pytest.mark.parametrize("model_name", ["tiny", "chest"])
def test_gradcam_on_last_layer_equals_cam_up_to_positive_scale(model_name, tiny, chest_model):
    """On the layer feeding GAP + Linear, d y_c / d A_k(i,j) = w_{c,k} / Z, so Grad-CAM = CAM / Z."""
    model = tiny if model_name == "tiny" else chest_model
    x = _x(1, (2, 3, 64, 64))
    p1, cam = chexcam.explain(model, x, normalize=False, upsample=False)
    p2, gc = chexcam.explain(model, x, method="gradcam", normalize=False, upsample=False)
    z = cam.shape[2] * cam.shape[3]
    np.testing.assert_allclose(p1, p2, atol=1e-6, rtol=0)  # cam may run on the exported graph (CPU)
    scale = (gc * cam).sum(axis=(0, 2, 3)) / (cam * cam).sum(axis=(0, 2, 3))  # least squares per class
    assert (scale > 0).all()
    np.testing.assert_allclose(scale, 1.0 / z, rtol=1e-4)
    np.testing.assert_allclose(gc * z, cam, rtol=1e-4, atol=1e-4 * np.abs(cam).max())
    # normalized maps are then identical
    _, a = chexcam.explain(model, x)
    _, b = chexcam.explain(model, x, method="gradcam")
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_gradcampp_closed_form_on_gap_linear(tiny):
    """With a constant gradient g = w/Z: alpha = g^2 / (2 g^2 + S g^3), w_k = Z alpha relu(g)."""
    x = _x(2)
    feats = {}

    def keep(layer, inputs, output):
        feats["f"] = output.numpy()

    h = tiny.backbone.batch_norm.register_forward_post_hook(keep)
    try:
        with paddle.no_grad():
            tiny(paddle.to_tensor(x))
    finally:
        h.remove()
    f = feats["f"].astype(np.float64)
    z = f.shape[2] * f.shape[3]
    g = tiny.head.weight.numpy().astype(np.float64).T / z  # [K, C]
    s = f.sum(axis=(2, 3))  # [B, C]
    den = 2 * g[None] ** 2 + s[:, None, :] * g[None] ** 3
    alpha = np.where(np.abs(den) > 1e-12, g[None] ** 2 / np.where(den == 0, 1, den), 0)
    w = z * alpha * np.maximum(g[None], 0)  # [B, K, C]
    expect = np.einsum("bkc,bchw->bkhw", w, f)
    _, got = chexcam.explain(tiny, x, method="gradcampp", normalize=False, upsample=False)
    np.testing.assert_allclose(got, expect, rtol=1e-3, atol=1e-3 * np.abs(expect).max())


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_plain_conv_net_without_gap_head(method):
    paddle.seed(1)
    net = PlainNet()
    x = _x(3, (2, 3, 16, 16))
    probs, maps = chexcam.explain(net, x, method=method, layer="features.4")
    assert probs.shape == (2, 3) and maps.shape == (2, 3, 16, 16)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    with paddle.no_grad():
        logits = net(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5)
    with pytest.raises(chexcam.ChexcamError, match="gradcam"):
        chexcam.explain(net, x, method="cam", layer="features.4")
    with pytest.raises(chexcam.ChexcamError, match="cam_layer"):
        chexcam.explain(net, x, method=method)
    with pytest.raises(chexcam.ChexcamError, match=r"not a \[B, C, h, w\]"):
        chexcam.explain(net, x, method=method, layer="classifier.1")


def test_gradcam_by_hand_on_plain_net():
    """Grad-CAM weights are the spatial means of d logit_c / d A, checked with paddle.grad directly."""
    paddle.seed(2)
    net = PlainNet()
    net.eval()
    x = paddle.to_tensor(_x(4, (2, 3, 16, 16)))
    x.stop_gradient = False
    a = net.features(x)
    logits = net.classifier(a)
    expect = []
    for c in range(3):
        (g,) = paddle.grad(logits[:, c].sum(), a, retain_graph=True)
        w = g.numpy().mean(axis=(2, 3))
        expect.append(np.einsum("bc,bchw->bhw", w, a.numpy()))
    expect = np.stack(expect, 1)
    _, got = chexcam.explain(net, x.detach().numpy(), method="gradcam", layer="features.4", normalize=False,
                             upsample=False)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_batched_equals_one_by_one_and_class_subsets(tiny, method):
    x = _x(5)
    _, full = chexcam.explain(tiny, x, method=method, normalize=False)
    for i in range(len(x)):
        _, one = chexcam.explain(tiny, x[i:i + 1], method=method, normalize=False)
        np.testing.assert_allclose(one[0], full[i], rtol=1e-4, atol=1e-5)
    _, sub = chexcam.explain(tiny, x, method=method, classes=[2, 0], normalize=False)
    np.testing.assert_allclose(sub, full[:, [2, 0]], rtol=1e-4, atol=1e-5)


#: one sample or step for the sampling methods (each is 1,024 masked forwards of DenseNet121 per sample)
QUICK = {"sscam": {"num_samples": 1, "batch_size": 256}, "iscam": {"steps": 1, "batch_size": 256},
         "scorecam": {"batch_size": 256}, "smoothgradcampp": {"num_samples": 1}}


@pytest.mark.parametrize("method", sorted(CAM_METHODS.names()))
def test_every_method_removes_hooks_restores_modes_leaves_nothing(chest_model, method):
    layer = chest_model.backbone.batch_norm
    before = len(layer._forward_post_hooks)
    attrs = {id(m): set(vars(m)) for m in [chest_model, *chest_model.sublayers()]}
    chest_model.train()
    chest_model.backbone.conv1_func.eval()
    try:
        probs, maps = chexcam.explain(chest_model, _x(6, (1, 3, 64, 64)), method=method, classes=[0, 5],
                                      **QUICK.get(method, {}))
        assert chest_model.training and not chest_model.backbone.conv1_func.training
    finally:
        chest_model.eval()
    assert maps.shape == (1, 2, 64, 64) and np.isfinite(maps).all()
    assert len(layer._forward_post_hooks) == before
    assert attrs == {id(m): set(vars(m)) for m in [chest_model, *chest_model.sublayers()]}
    assert all(p.grad is None for p in chest_model.parameters())
    with pytest.raises(Exception):
        chexcam.explain(chest_model, np.zeros((1, 4, 64, 64), "float32"), method=method)
    assert len(layer._forward_post_hooks) == before


def test_gradient_methods_work_with_frozen_parameters(tiny):
    flags = [p.stop_gradient for p in tiny.parameters()]
    for p in tiny.parameters():
        p.stop_gradient = True
    try:
        _, a = chexcam.explain(tiny, _x(7), method="gradcam", normalize=False, upsample=False)
    finally:
        for p, f in zip(tiny.parameters(), flags):
            p.stop_gradient = f
    _, b = chexcam.explain(tiny, _x(7), method="gradcam", normalize=False, upsample=False)
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_any_named_layer(tiny, method):
    probs, maps = chexcam.explain(tiny, _x(8, (1, 3, 64, 64)), method=method,
                                  layer="backbone.dense_block_func_list.0", upsample=False)
    assert maps.shape[:2] == (1, 3) and maps.shape[2] > 8  # an earlier, finer layer
