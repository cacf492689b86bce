"""The CAM family against pytorch-grad-cam and torch-cam on the same weights and the bundled NIH images.

A torchvision DenseNet121 with random weights (and random BatchNorm statistics) is converted with chexcam's
converter; both libraries explain it class by class, as their users must, and chexcam explains every class in one
call. Raw maps are compared before any normalization (the peers' ReLU is applied to chexcam's maps where the peer
applies one). Where a peer deviates from the paper, the test shows the deviation: the method then equals the peer
only with the peer's own rule (its masks, coefficients or sign), as the README's methods table says.
"""

import numpy as np
import pytest

import chexcam
from chexcam.cam.score import masked_scores, softmax_channels
from chexcam.convert import convert_file

from .test_parity import _load, nih_batch, random_densenet, torch  # noqa: F401  (fixtures, skips without torch)

pytest.importorskip("pytorch_grad_cam", reason="needs grad-cam (pip install -e '.[parity]')")
pytest.importorskip("torchcam", reason="needs torchcam (pip install -e '.[parity]')")

pytestmark = [pytest.mark.parity, pytest.mark.slow]

#: chexcam layer name -> torchvision module (``features.relu5`` is the final ReLU, appended: torchvision applies it
#: functionally, chexcam's last BatchNorm has it fused)
LAYERS = {"backbone.batch_norm": "features.relu5", "backbone.tr_conv2_blk": "features.transition1"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    net = random_densenet(14, seed=4)
    folder = tmp_path_factory.mktemp("camparity")
    torch.save(net.state_dict(), folder / "tv.pth")
    convert_file(str(folder / "tv.pth"), str(folder / "tv.pdparams"))
    model = _load(str(folder / "tv.pdparams"))
    net.features.add_module("relu5", torch.nn.ReLU())
    return model, HookableDenseNet(net).eval()


class HookableDenseNet(torch.nn.Module):
    """torchvision's DenseNet121 with its final ReLU as a module (``features.relu5``), applied once: torchvision
    applies it functionally after ``features``, so a hook on ``features`` would see the map before it, and a
    second ReLU after ``relu5`` would zero the gradient wherever the map is 0 (chexcam's graph has one ReLU)."""

    def __init__(self, net):
        super().__init__()
        self.features, self.classifier = net.features, net.classifier

    def forward(self, x):
        f = torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(f, 1))


@pytest.fixture(scope="module")
def x64(nih_batch):  # noqa: F811
    t = torch.nn.functional.interpolate(torch.from_numpy(nih_batch[:2]), size=(64, 64), mode="bilinear",
                                        align_corners=False)
    return t.numpy()


def _module(net, name):
    return dict(net.named_modules())[name]


def _relu(a):
    return np.maximum(a, 0.0)


def _assert_close(ours, ref, rel=1e-4):
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max()) / scale
    assert err < rel, f"relative difference {err:.2e}"


def _grad_cam_raw(monkeypatch, cls, net, layer, x, targets_of, classes=range(14), **kw):
    """pytorch-grad-cam's maps with its ``scale_cam_image`` (min-max + resize) switched off: relu(raw)."""
    import pytorch_grad_cam.base_cam as base

    monkeypatch.setattr(base, "scale_cam_image", lambda cam, target_size=None: cam)
    cam = cls(model=net, target_layers=[_module(net, layer)], **kw)
    out = []
    for c in classes:
        out.append(cam(input_tensor=torch.from_numpy(x), targets=[targets_of(c)] * len(x)))
    return np.stack(out, axis=1)


def test_converted_activations_match(pair, x64):
    model, net = pair
    from chexcam.cam import capture_output

    for ours, theirs in LAYERS.items():
        store_t = {}
        h = _module(net, theirs).register_forward_hook(lambda _m, _i, o: store_t.setdefault("o", o.detach()))
        with torch.no_grad():
            net(torch.from_numpy(x64))
        h.remove()
        import paddle

        with capture_output(dict(model.named_sublayers())[ours]) as store, paddle.no_grad():
            model(paddle.to_tensor(x64))
        _assert_close(store["output"].numpy(), store_t["o"].numpy(), rel=1e-4)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("method,peer", [("gradcam", "GradCAM"), ("hirescam", "HiResCAM"), ("xgradcam", "XGradCAM"),
                                         ("layercam", "LayerCAM"), ("gradcam_elementwise", "GradCAMElementWise")])
def test_gradient_cams_equal_pytorch_grad_cam(monkeypatch, pair, x64, layer, method, peer):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, net = pair
    ref = _grad_cam_raw(monkeypatch, getattr(pytorch_grad_cam, peer), net, LAYERS[layer], x64, ClassifierOutputTarget)
    _, ours = chexcam.explain(model, x64, method=method, layer=layer, normalize=False, upsample=False)
    _assert_close(_relu(ours), ref)


@pytest.mark.parametrize("method,peer", [("eigencam", "EigenCAM"), ("eigengradcam", "EigenGradCAM"),
                                         ("kpcacam", "KPCA_CAM")])
def test_principal_component_cams_equal_pytorch_grad_cam_up_to_sign(monkeypatch, pair, x64, method, peer):
    """pytorch-grad-cam centres the channels (Eigen-CAM's paper does not: ``center=True`` is the peer's rule) and
    leaves the sign of the component to LAPACK; chexcam fixes it (the map correlates with the channel sum)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, net = pair
    layer = "backbone.tr_conv2_blk"
    ref = _grad_cam_raw(monkeypatch, getattr(pytorch_grad_cam, peer), net, LAYERS[layer], x64, ClassifierOutputTarget)
    opts = {"center": True} if method == "eigencam" else {}
    _, ours = chexcam.explain(model, x64, method=method, layer=layer, normalize=False, upsample=False, **opts)
    for b in range(len(x64)):
        for k in range(14):
            a, r = ours[b, k], ref[b, k]
            best = min(np.abs(_relu(a) - r).max(), np.abs(_relu(-a) - r).max()) / max(np.abs(r).max(), 1e-12)
            assert best < 2e-3, (method, b, k, best)
    if method == "eigencam":  # the paper's uncentred component is another map
        _, paper = chexcam.explain(model, x64, method=method, layer=layer, normalize=False, upsample=False)
        assert np.abs(paper - ours).max() > 1e-2 * np.abs(ours).max()


def test_shapley_cam_equals_pytorch_grad_cam(monkeypatch, pair, x64):
    """At an inner layer, explaining the sigmoid (the Hessian-vector product is not zero there)."""
    import pytorch_grad_cam

    model, net = pair
    layer = "backbone.tr_conv2_blk"

    class Sigmoid:
        def __init__(self, c):
            self.c = c

        def __call__(self, out):
            return torch.sigmoid(out[..., self.c])

    ref = _grad_cam_raw(monkeypatch, pytorch_grad_cam.ShapleyCAM, net, LAYERS[layer], x64[:1], Sigmoid)
    _, ours = chexcam.explain(model, x64[:1], method="shapleycam", layer=layer, normalize=False, upsample=False,
                              target="probability")
    _assert_close(_relu(ours), ref, rel=1e-3)
    _, gc = chexcam.explain(model, x64[:1], method="gradcam", layer=layer, normalize=False, upsample=False,
                            target="probability")
    assert np.abs(_relu(gc) - ref).max() > 1e-3 * np.abs(ref).max()


def test_finer_cam_equals_pytorch_grad_cam(monkeypatch, pair, x64):
    import pytorch_grad_cam.base_cam as base
    from pytorch_grad_cam import FinerCAM, GradCAM

    model, net = pair
    monkeypatch.setattr(base, "scale_cam_image", lambda cam, target_size=None: cam)
    cam = FinerCAM(net, [_module(net, "features.relu5")], base_method=GradCAM)
    xt = torch.from_numpy(x64)
    ref = np.stack([cam(xt, alpha=1.0, comparison_categories=[1, 2, 3], target_idx=c) for c in range(14)], axis=1)
    _, ours = chexcam.explain(model, x64, method="finercam", normalize=False, upsample=False)
    _assert_close(_relu(ours), ref)


def _score_weights_ref(net, layer, x, masks, c):
    with torch.no_grad():
        s = net(torch.from_numpy((x[None] * masks[:, None]).astype(np.float32)))[:, c].numpy().astype(np.float64)
    e = np.exp(s - s.max())
    return e / e.sum()


def test_score_cam_against_both_peers(pair, x64):
    """chexcam scores every class from one set of masked forwards. With each peer's own masks and its logit score
    it gives the peer's weights; its own masks upsample first and then normalize (the paper's order)."""
    import paddle
    import pytorch_grad_cam
    import torchcam.methods as tcm
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, net = pair
    layer, tlayer = "backbone.tr_conv2_blk", "features.transition1"
    x = torch.nn.functional.interpolate(torch.from_numpy(x64[:1]), size=(64, 64), mode="bilinear",
                                        align_corners=False).numpy()
    from chexcam.cam import capture_output

    with capture_output(dict(model.named_sublayers())[layer]) as store, paddle.no_grad():
        model(paddle.to_tensor(x))
    feats = store["output"].numpy()[0]
    fwd = chexcam.cam.score.model_forward_fn(model)
    # pytorch-grad-cam: UpsamplingBilinear2d (align_corners=True), normalize with + 1e-8, logits, softmax
    up = torch.nn.UpsamplingBilinear2d(size=(64, 64))(torch.from_numpy(feats[None]))[0].numpy()
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    gc_masks = (up - lo) / (hi - lo + 1e-8)
    gc = pytorch_grad_cam.ScoreCAM(model=net, target_layers=[_module(net, tlayer)])
    gc.batch_size = 64
    acts = None

    def grab(_m, _i, o):
        nonlocal acts
        acts = o.detach().numpy()

    h = _module(net, tlayer).register_forward_hook(grab)
    with torch.no_grad():
        net(torch.from_numpy(x))
    h.remove()
    scores = masked_scores(fwd, x[0], feats, 64, masks=gc_masks)  # [C, 14], one set of forwards for all classes
    for c in range(14):
        w_peer = gc.get_cam_weights(torch.from_numpy(x), None, [ClassifierOutputTarget(c)], acts, None)[0]
        _assert_close(softmax_channels(scores[:, [c]])[:, 0], w_peer, rel=1e-3)
    # torch-cam: normalize, then upsample (half-pixel), logits minus the unmasked logit, softmax
    norm = (feats - feats.min(axis=(1, 2), keepdims=True)) / np.maximum(
        feats.max(axis=(1, 2), keepdims=True) - feats.min(axis=(1, 2), keepdims=True), 1e-12)
    tc_masks = torch.nn.functional.interpolate(torch.from_numpy(norm[None].astype(np.float32)), size=(64, 64),
                                               mode="bilinear", align_corners=False)[0].numpy()
    ext = tcm.ScoreCAM(net, target_layer=tlayer, batch_size=64, input_shape=(3, 64, 64))
    scores_tc = masked_scores(fwd, x[0], feats, 64, masks=tc_masks)
    for c in range(14):
        with torch.no_grad():
            net(torch.from_numpy(x))
            ref = ext(class_idx=c, normalized=False)[0][0].numpy()
        w = softmax_channels(scores_tc[:, [c]])[:, 0]
        _assert_close(_relu(np.einsum("chw,c->hw", feats.astype(np.float64), w)), ref, rel=1e-3)
    ext.remove_hooks()
    # chexcam's own maps (paper's order, probability) differ from both
    _, ours = chexcam.explain(model, x, method="scorecam", layer=layer, normalize=False, upsample=False)
    w_logit_gc = softmax_channels(scores[:, [0]])[:, 0]
    assert np.abs(ours[0, 0] - np.einsum("chw,c->hw", feats, w_logit_gc)).max() > 1e-6


def test_is_cam_and_ss_cam_against_torch_cam(pair, x64):
    """torch-cam's IS-CAM scales sample i by the cumulative sum_{j<=i} j/N (chexcam: i/N, the paper); with that
    rule, torch-cam's masks and its noise, chexcam's scoring gives torch-cam's maps."""
    import paddle
    import torchcam.methods as tcm

    from chexcam.cam import capture_output

    model, net = pair
    layer, tlayer = "backbone.tr_conv2_blk", "features.transition1"
    x = torch.nn.functional.interpolate(torch.from_numpy(x64[:1]), size=(64, 64), mode="bilinear",
                                        align_corners=False).numpy()
    with capture_output(dict(model.named_sublayers())[layer]) as store, paddle.no_grad():
        model(paddle.to_tensor(x))
    feats = store["output"].numpy()[0]
    fwd = chexcam.cam.score.model_forward_fn(model)
    norm = (feats - feats.min(axis=(1, 2), keepdims=True)) / np.maximum(
        feats.max(axis=(1, 2), keepdims=True) - feats.min(axis=(1, 2), keepdims=True), 1e-12)
    masks = torch.nn.functional.interpolate(torch.from_numpy(norm[None].astype(np.float32)), size=(64, 64),
                                            mode="bilinear", align_corners=False)[0].numpy()
    n = 3
    cumulative = np.cumsum([(i + 1) / n for i in range(n)])
    ext = tcm.ISCAM(net, target_layer=tlayer, batch_size=64, num_samples=n, input_shape=(3, 64, 64))
    s_cum = masked_scores(fwd, x[0], feats, 64, coefficients=tuple(cumulative), masks=masks)
    s_paper = masked_scores(fwd, x[0], feats, 64, coefficients=tuple((i + 1) / n for i in range(n)), masks=masks)
    for c in (0, 5, 13):
        with torch.no_grad():
            net(torch.from_numpy(x))
            ref = ext(class_idx=c, normalized=False)[0][0].numpy()
        ok = _relu(np.einsum("chw,c->hw", feats.astype(np.float64), softmax_channels(s_cum[:, [c]])[:, 0]))
        _assert_close(ok, ref, rel=1e-3)
        paper = _relu(np.einsum("chw,c->hw", feats.astype(np.float64), softmax_channels(s_paper[:, [c]])[:, 0]))
        assert np.abs(paper - ref).max() > 1e-6 * np.abs(ref).max()
    ext.remove_hooks()
    # SS-CAM: torch-cam's noise handed to both
    std, n = 2.0, 2
    noise = [np.random.default_rng(i).standard_normal(masks.shape).astype(np.float32) * std for i in range(n)]
    ext = tcm.SSCAM(net, target_layer=tlayer, batch_size=64, num_samples=n, std=std, input_shape=(3, 64, 64))
    draws = iter(noise)

    class Fixed:
        def sample(self, size):
            return torch.from_numpy(next(draws)[None])

    ext._distrib = Fixed()
    with torch.no_grad():
        net(torch.from_numpy(x))
        ref = ext(class_idx=3, normalized=False)[0][0].numpy()
    ext.remove_hooks()
    total = sum(masked_scores(fwd, x[0], feats, 64, masks=masks + e) for e in noise) / n
    _assert_close(_relu(np.einsum("chw,c->hw", feats.astype(np.float64), softmax_channels(total[:, [3]])[:, 0])),
                  ref, rel=1e-3)


def test_ablation_cam_sign_against_pytorch_grad_cam(monkeypatch, pair, nih_batch):  # noqa: F811
    """pytorch-grad-cam divides the score drop by y_c: for a negative logit every weight flips. chexcam divides by
    |y_c|: the same map where y_c > 0, the negated one where y_c < 0."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, net = pair
    x = torch.nn.functional.interpolate(torch.from_numpy(nih_batch[:1]), size=(32, 32), mode="bilinear",
                                        align_corners=False).numpy()
    probs, ours = chexcam.explain(model, x, method="ablationcam", normalize=False, upsample=False, batch_size=256)
    logits = np.log(probs / (1 - probs))[0]
    # two classes of each sign (the peer ablates 1,024 channels per class: a few classes keep the test short)
    classes = list(np.argsort(logits)[:2]) + list(np.argsort(logits)[-2:])
    assert logits[classes[0]] < 0 < logits[classes[-1]]
    ref = _grad_cam_raw(monkeypatch, pytorch_grad_cam.AblationCAM, net, "features.relu5", x, ClassifierOutputTarget,
                        batch_size=256, classes=classes)
    for i, k in enumerate(classes):
        sign = 1.0 if logits[k] > 0 else -1.0
        _assert_close(_relu(sign * ours[0, k]), ref[0, i], rel=1e-3)
        if sign < 0:  # the peer's map is the negated one
            assert np.abs(_relu(ours[0, k]) - ref[0, i]).max() > 1e-3 * np.abs(ref[0, i]).max()
