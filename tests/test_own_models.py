"""Grad-CAM on models that are not chexcam's: the README's "Explain your own model" examples, with random weights.

VGG16 (softmax, the predicted class), VGG19 (top-5 classes) from ``paddle.vision`` and a Keras-style binary
classifier (convolutions, flatten, dense layers, one sigmoid). Each map is checked against a reference that does
not use autograd: a central finite difference of the explained score along the layer's own activation vector at
each pixel (``L(i, j) = sum_k alpha_k A_k(i, j) = <grad y, A(:, i, j) x 1> / Z``), or a closed form in NumPy.
"""

import copy

import numpy as np
import paddle
import pytest
from paddle import nn

import chexcam

SIZE = 32


def _x(seed, size=SIZE):
    return np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)


def fd_gradcam(rest, feats, classes, score, eps=1e-3):
    """Finite-difference Grad-CAM maps ``[len(classes), h, w]`` of one image, in float64.

    ``rest`` maps the hooked layer's output ``[n, C, h, w]`` (float64) to logits; shifting every channel ``k``
    uniformly by ``eps * A_k(i, j)`` changes the score by ``eps * Z * L(i, j)`` to first order (Grad-CAM's
    ``alpha_k`` is the spatial mean of the gradient), so one central difference per pixel gives the map there.
    """
    a = feats[0].astype(np.float64)  # [C, h, w]
    c, h, w = a.shape
    dirs = a.reshape(c, h * w).T  # [h*w, C]: the activation vector of each pixel
    batch = np.concatenate([a[None] + eps * dirs[:, :, None, None], a[None] - eps * dirs[:, :, None, None]])
    with paddle.no_grad():
        y = score(rest(paddle.to_tensor(batch))).numpy()
    d = (y[: h * w] - y[h * w:]) / (2 * eps * h * w)  # [h*w, K]
    return d[:, classes].T.reshape(len(classes), h, w)


def vgg_closed_form(model, feats, classes, targets=("logit",)):
    """Grad-CAM of a ``paddle.vision`` VGG at 32 px from its last ReLU, in float64 NumPy.

    There the head is: 2x2 max-pool to 1x1 (``v_k = max A_k``), the 7x7 adaptive average pool (49 copies),
    dense-ReLU-dense-ReLU-dense (dropout is the identity in eval mode). So ``dz/dv = (W1' r1) (W2 r2) W3`` with
    ``W1'`` the first weight summed over the 49 copies and ``r`` the ReLUs' on/off pattern, the gradient reaches
    ``A_k`` only at its maximum, and ``alpha_k = (dz/dv_k) / 4``. Softmax probability:
    ``dp_c/dv = p_c (dz_c/dv - sum_j p_j dz_j/dv)``.
    """
    a = feats[0].astype(np.float64)  # [C, 2, 2]
    c = a.shape[0]
    v = a.reshape(c, -1).max(axis=1)
    lin = [model.classifier[i] for i in (0, 3, 6)]
    w1 = lin[0].weight.numpy().reshape(c, 49, -1).sum(axis=1, dtype=np.float64)
    w2, w3 = (m.weight.numpy().astype(np.float64) for m in lin[1:])
    b1, b2, b3 = (m.bias.numpy().astype(np.float64) for m in lin)
    h1 = v @ w1 + b1
    h2 = np.maximum(h1, 0) @ w2 + b2
    z = np.maximum(h2, 0) @ w3 + b3
    jac = ((w1 * (h1 > 0)) @ (w2 * (h2 > 0))) @ w3  # [C, K] = dz / dv
    p = np.exp(z - z.max())
    p /= p.sum()
    maps = []
    for target in targets:
        j = p * (jac - (jac @ p)[:, None]) if target == "probability" else jac
        alpha = j[:, classes] / a[0].size  # [C, K']
        maps.append(np.einsum("ck,chw->khw", alpha, a))
    return maps, z


def assert_maps_close(got, ref, rtol=2e-3):
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale)


@pytest.fixture(scope="module")
def vgg16():
    paddle.seed(0)
    model = paddle.vision.models.vgg16(pretrained=False)  # random weights: no download
    model.eval()
    return model


@pytest.fixture(scope="module")
def vgg19():
    paddle.seed(1)
    model = paddle.vision.models.vgg19(pretrained=False)
    model.eval()
    return model


def test_vgg16_softmax_predicted_class_closed_form(vgg16):
    x = _x(0)
    # README: the predicted class of a softmax classifier, at the last convolution's ReLU
    probs, maps = chexcam.explain(vgg16, x, method="gradcam", layer="features.29", classes="predicted",
                                  activation="softmax", normalize=False, upsample=False)
    with paddle.no_grad():
        logits = vgg16(paddle.to_tensor(x))
        feats = vgg16.features[:30](paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(probs, paddle.nn.functional.softmax(logits).numpy(), atol=1e-6)
    top = int(probs.argmax())
    assert maps.shape == (1, 1) + feats.shape[2:]
    (ref, pref), z = vgg_closed_form(vgg16, feats, [top], ("logit", "probability"))
    np.testing.assert_allclose(logits.numpy()[0], z, rtol=0, atol=1e-4 * np.abs(z).max())
    assert_maps_close(maps[0], ref)
    # the probability of a softmax couples the classes
    _, pmaps = chexcam.explain(vgg16, x, method="gradcam", layer="features.29", classes="predicted",
                               activation="softmax", target="probability", normalize=False, upsample=False)
    assert_maps_close(pmaps[0], pref)
    # upsampled + normalized as every method
    _, up = chexcam.explain(vgg16, x, method="gradcam", layer="features.29", classes="predicted",
                            activation="softmax")
    assert up.shape == (1, 1, SIZE, SIZE) and 0 <= up.min() and up.max() <= 1


def test_vgg19_top5_closed_form(vgg19):
    x = _x(1)
    probs, _ = chexcam.explain(vgg19, x, method="gradcam", layer="features.35", classes=[0], activation="softmax")
    top5 = [int(c) for c in np.argsort(-probs[0])[:5]]
    _, maps = chexcam.explain(vgg19, x, method="gradcam", layer="features.35", classes=top5, activation="softmax",
                              normalize=False, upsample=False)
    assert maps.shape[:2] == (1, 5)
    with paddle.no_grad():
        feats = vgg19.features[:36](paddle.to_tensor(x)).numpy()
    assert_maps_close(maps[0], vgg_closed_form(vgg19, feats, top5)[0][0])


class BinaryNet(nn.Layer):
    """Keras-style binary classifier: conv-pool-conv-pool, flatten, dense + ReLU, dense to one logit."""

    def __init__(self, size=64):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2D(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2),
                                      nn.Conv2D(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 64), nn.ReLU(),
                                        nn.Linear(64, 1))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def binary():
    paddle.seed(2)
    net = BinaryNet(SIZE)
    net.eval()
    return net


def test_binary_flatten_dense_closed_form(binary):
    """Hooked after the last pooling, the rest is dense-ReLU-dense: d z / d A = (w2 * [h > 0]) W1, in NumPy."""
    x = _x(2)
    probs, maps = chexcam.explain(binary, x, method="gradcam", layer="features.5", normalize=False, upsample=False)
    with paddle.no_grad():
        a = binary.features(paddle.to_tensor(x)).numpy().astype(np.float64)  # [1, C, h, w]
        z = binary(paddle.to_tensor(x)).numpy()
    w1 = binary.classifier[1].weight.numpy().astype(np.float64)  # [C*h*w, 64] (paddle's Linear layout)
    b1 = binary.classifier[1].bias.numpy().astype(np.float64)
    w2 = binary.classifier[3].weight.numpy().astype(np.float64)[:, 0]
    h = a.reshape(1, -1) @ w1 + b1
    grad = (w1 @ (w2 * (h[0] > 0))).reshape(a.shape[1:])  # d z / d A
    alpha = grad.mean(axis=(1, 2))
    expect = np.einsum("c,chw->hw", alpha, a[0])
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-z)), rtol=1e-5)
    assert_maps_close(maps[0, 0], expect, rtol=1e-4)
    # one sigmoid: the probability target only rescales by p (1 - p) > 0
    _, pm = chexcam.explain(binary, x, method="gradcam", layer="features.5", target="probability",
                            normalize=False, upsample=False)
    p = float(probs[0, 0])
    assert_maps_close(pm[0, 0], p * (1 - p) * expect, rtol=1e-4)


def test_binary_last_convolution_by_finite_differences(binary):
    x = _x(3)
    _, maps = chexcam.explain(binary, x, method="gradcam", layer="features.4", normalize=False, upsample=False)
    with paddle.no_grad():
        feats = binary.features[:5](paddle.to_tensor(x)).numpy()
    net64 = copy.deepcopy(binary)
    net64.to(dtype="float64")
    rest = lambda a: net64.classifier(net64.features[5](a))  # noqa: E731
    assert_maps_close(maps[0], fd_gradcam(rest, feats, [0], lambda z: z))


def test_predicted_class_per_image_and_gradcampp(binary):
    """``classes="predicted"`` picks each image's own class; batched equals one by one."""
    paddle.seed(4)
    net = nn.Sequential(nn.Conv2D(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 5))
    net.eval()
    x = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)
    for method in ("gradcam", "gradcampp"):
        probs, maps = chexcam.explain(net, x, method=method, layer="1", classes="predicted", activation="softmax",
                                      normalize=False, upsample=False)
        pred = probs.argmax(axis=1)
        _, full = chexcam.explain(net, x, method=method, layer="1", activation="softmax", normalize=False,
                                  upsample=False)
        np.testing.assert_allclose(maps[:, 0], full[np.arange(4), pred], rtol=1e-5, atol=1e-7)


def test_clear_one_line_errors(vgg16, binary):
    x = _x(4)
    with pytest.raises(chexcam.ChexcamError, match=r"no layer 'features\.299'; close names: 'features\.29'") as e:
        chexcam.explain(vgg16, x, method="gradcam", layer="features.299")
    assert "\n" not in str(e.value)
    with pytest.raises(chexcam.ChexcamError, match=r"outputs \[1, 4096\], not a \[B, C, h, w\].*'features\.28'"):
        chexcam.explain(vgg16, x, method="gradcam", layer="classifier.0")
    with pytest.raises(chexcam.ChexcamError, match="unknown activation 'relu'"):
        chexcam.explain(binary, x, method="gradcam", layer="features.4", activation="relu")
    with pytest.raises(chexcam.ChexcamError, match="unknown target 'logits'"):
        chexcam.explain(binary, x, method="gradcam", layer="features.4", target="logits")
    tiny = chexcam.create_model("densenet_tiny", num_classes=2)
    with pytest.raises(chexcam.ChexcamError, match="target='probability' needs a gradient method"):
        chexcam.explain(tiny, x, method="cam", target="probability")
