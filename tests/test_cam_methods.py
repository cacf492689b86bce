"""The CAM family: closed forms at the head's layer, float64 references of each formula at inner layers, finite
differences, one call for every class, and the wrappers (multi-layer fusion, aug_smooth, eigen_smooth)."""

import numpy as np
import paddle
import pytest

import chexcam
from chexcam.cam import capture_output, first_component, list_cam_methods, method_options
from chexcam.cam.base import AUG_ZOOMS
from chexcam.cam.dff import factorize
from chexcam.cam.score import channel_masks
from chexcam.registry import CAM_METHODS

CAM_FAMILY = [m for m in list_cam_methods() if m != "lime"]
INNER = "backbone.dense_block_func_list.2"  # a [B, C, 8, 8] layer of densenet_tiny at 64 px, stride 8
#: fast settings for the sampling methods (their defaults are the papers'; these keep the suite quick)
FAST = {"sscam": {"num_samples": 3}, "iscam": {"steps": 3}, "smoothgradcampp": {"num_samples": 3},
        "dff": {"max_iter": 400}}


@pytest.fixture(scope="module")
def tiny():
    paddle.seed(0)
    model = chexcam.create_model("densenet_tiny", num_classes=3, output_stride=8)
    model.head.bias.set_value(paddle.to_tensor([0.3, -0.2, 0.1]))
    model.eval()
    return model


def _x(seed, shape=(2, 3, 64, 64)):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _raw(model, x, method, **kw):
    opts = {**FAST.get(method, {}), **kw.pop("options", {})}
    return chexcam.explain(model, x, method=method, normalize=False, upsample=False, **kw, **opts)


def _features(model, x, layer=None):
    layer = dict(model.named_sublayers())[layer or model.cam_layer]
    with capture_output(layer) as store, paddle.no_grad():
        logits = model(paddle.to_tensor(x))
    return store["output"].numpy().astype(np.float64), logits.numpy().astype(np.float64)


def test_registry_holds_every_method():
    expected = {"cam", "gradcam", "gradcampp", "xgradcam", "hirescam", "gradcam_elementwise", "layercam",
                "eigengradcam", "smoothgradcampp", "finercam", "shapleycam", "scorecam", "sscam", "iscam",
                "ablationcam", "eigencam", "kpcacam", "dff", "lime"}
    assert expected <= set(list_cam_methods())
    for m in CAM_FAMILY:  # formula and paper in every docstring
        doc = CAM_METHODS.get(m).__doc__
        assert doc and ("20" in doc) and len(doc) > 200, m


def test_schema_defaults_are_the_methods_defaults():
    """The config's methods.<name> sections hold exactly each method's own options and defaults."""
    cfg = chexcam.load_config(None)
    for m in CAM_FAMILY:
        own = dict(CAM_METHODS.get(m).DEFAULTS)
        section = getattr(cfg.methods, m, None)
        if not own:
            assert section is None, m
            continue
        import dataclasses

        assert dataclasses.asdict(section) == own, m
        assert set(method_options(m)) == {"aug_smooth", "eigen_smooth", "fusion", *own}


# ---------------------------------------------------------------------------------------------
# closed forms at the layer that feeds GAP + Linear: d y_c / d A_k(i, j) = w_{c,k} / Z


@pytest.fixture(scope="module", params=["tiny", "chest"])
def head_case(request, tiny, chest_model):
    model = tiny if request.param == "tiny" else chest_model
    x = _x(3, (2, 3, 64, 64))
    feats, logits = _features(model, x)
    w = model.head.weight.numpy().astype(np.float64)  # [C, K]
    cam = np.einsum("bchw,ck->bkhw", feats, w)
    return model, x, feats, logits, w, cam


def _close(a, b, rel=2e-5):
    np.testing.assert_allclose(a, b, rtol=0, atol=rel * max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam", "shapleycam"])
def test_gradient_cams_equal_cam_over_z_at_the_head(head_case, method):
    model, x, feats, _, _, cam = head_case
    z = feats.shape[2] * feats.shape[3]
    _, m = _raw(model, x, method)
    _close(m, cam / z)


@pytest.mark.parametrize("method", ["layercam", "gradcam_elementwise"])
def test_positive_gradient_cams_at_the_head(head_case, method):
    """LayerCAM = element-wise = sum_k relu(w_ck) A_k / Z (A >= 0 after the final ReLU)."""
    model, x, feats, _, w, _ = head_case
    assert feats.min() >= 0
    z = feats.shape[2] * feats.shape[3]
    _, m = _raw(model, x, method)
    _close(m, np.einsum("bchw,ck->bkhw", feats, np.maximum(w, 0)) / z)


def test_ablation_cam_closed_form_at_the_head(head_case):
    """y_c - y_c(A_k = 0) = w_ck mean(A_k), so w_k = w_ck mean(A_k) / |y_c|."""
    model, x, feats, logits, w, _ = head_case
    weights = w[None] * feats.mean(axis=(2, 3))[:, :, None] / np.abs(logits)[:, None, :]  # [B, C, K]
    _, m = _raw(model, x, "ablationcam", options={"batch_size": 64})
    _close(m, np.einsum("bchw,bck->bkhw", feats, weights), rel=1e-3)  # logit differences in float32


def test_ablation_cam_closed_form_is_what_the_ablated_forwards_give(tiny):
    """At the head's layer the ablated logits are computed in closed form; they equal the hooked forwards."""
    from chexcam.cam.ablation import AblationCAM
    from chexcam.cam.base import Pass

    x = _x(4, (1, 3, 64, 64))
    cam = AblationCAM(tiny, batch_size=16)
    layer = dict(tiny.named_sublayers())[tiny.cam_layer]
    with capture_output(layer) as store, paddle.no_grad():
        logits = tiny(paddle.to_tensor(x))
    p = Pass(paddle.to_tensor(x), store["output"], logits, logits, "logit", "sigmoid", layer, tiny.cam_layer)
    closed = cam.head_ablated_logits(p, 0)
    assert closed is not None
    _close(closed, cam.ablated_scores(p, 0), rel=1e-5)
    inner = AblationCAM(tiny, INNER)
    p_inner = Pass(p.x, store["output"], logits, logits, "logit", "sigmoid", layer, INNER)
    assert inner.head_ablated_logits(p_inner, 0) is None


def test_finercam_closed_form_at_the_head(head_case):
    """The gradient of T_c (softmax-weighted difference to the 3 nearest logits) through z = W^T mean(A) + b."""
    model, x, feats, logits, w, _ = head_case
    z = feats.shape[2] * feats.shape[3]
    K = logits.shape[1]
    k = min(3, K - 1)

    def target(zz, c, comp):
        p = np.exp(zz - zz.max())
        p /= p.sum()
        return float((p[comp] * (zz[c] - zz[comp])).sum() / (p[comp].sum() + 1e-9))

    expected = np.zeros((len(x), K) + feats.shape[2:])
    for b in range(len(x)):
        for c in range(K):
            order = np.argsort(np.abs(logits[b] - logits[b, c]), kind="stable")
            comp = order[order != c][:k]
            grad = np.zeros(K)
            for j in range(K):  # dT/dz by central differences (T is smooth in z)
                e = np.zeros(K)
                e[j] = 1e-5
                grad[j] = (target(logits[b] + e, c, comp) - target(logits[b] - e, c, comp)) / 2e-5
            alpha = w @ grad / z  # d T / d A_k is the same at every position
            expected[b, c] = np.einsum("chw,c->hw", feats[b], alpha)
    _, m = _raw(model, x, "finercam")
    _close(m, expected, rel=1e-4)


def test_eigen_cam_is_the_first_principal_component(head_case):
    """Against an eigendecomposition of O^T O (not the SVD the method uses), up to the documented sign rule."""
    model, x, feats, _, _, _ = head_case
    _, m = _raw(model, x, "eigencam")
    for b in range(len(x)):
        o = feats[b].reshape(feats.shape[1], -1).T  # [hw, C]
        vals, vecs = np.linalg.eigh(o.T @ o)
        proj = o @ vecs[:, -1]
        ref = feats[b].sum(axis=0).ravel()
        proj = proj if proj @ (ref - ref.mean()) >= 0 else -proj
        for k in range(m.shape[1]):  # class-agnostic: the same map for every class
            _close(m[b, k], proj.reshape(feats.shape[2:]), rel=1e-4)


def test_kpca_cam_against_the_kernel_matrix(head_case):
    """scikit-learn's sigmoid kernel PCA by hand: tanh(X X^T / C + 1), centred, top eigenvector x sqrt(eigenvalue)."""
    model, x, feats, _, _, _ = head_case
    _, m = _raw(model, x, "kpcacam")
    for b in range(len(x)):
        s = feats[b].reshape(feats.shape[1], -1).T
        s = s - s.mean(axis=0)
        kern = np.tanh(s @ s.T / s.shape[1] + 1.0)
        n = len(kern)
        one = np.full((n, n), 1.0 / n)
        kc = kern - one @ kern - kern @ one + one @ kern @ one
        vals, vecs = np.linalg.eigh(kc)
        proj = vecs[:, -1] * np.sqrt(vals[-1])
        ref = feats[b].sum(axis=0).ravel()
        proj = proj if proj @ (ref - ref.mean()) >= 0 else -proj
        _close(m[b, 0], proj.reshape(feats.shape[2:]), rel=1e-3)


def test_dff_is_the_cam_of_the_factorized_feature_map(head_case):
    model, x, feats, _, w, cam = head_case
    _, m = _raw(model, x, "dff", options={"n_components": 4, "seed": 1})
    for b in range(len(x)):
        basis, comps, offset = factorize(feats[b], 4, 1, 400)
        recon = np.einsum("cn,nhw->chw", basis, comps) + offset[:, None, None]
        _close(m[b], np.einsum("chw,ck->khw", recon, w), rel=1e-4)
    # more concepts reconstruct more of the map: the CAM itself in the limit
    err = [np.abs(_raw(model, x[:1], "dff", options={"n_components": n})[1] - cam[:1]).mean() for n in (1, 8)]
    assert err[1] < err[0]


# ---------------------------------------------------------------------------------------------
# float64 references of each formula at an inner layer


def _model_logits(model, batch):
    with paddle.no_grad():
        return model(paddle.to_tensor(batch.astype(np.float32))).numpy().astype(np.float64)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _score_reference(model, x, feats, coefficients, noise=None):
    """sum over samples of f^c(x * (coef H_k + e)), softmax over k, weighted sum: float64, one channel at a time."""
    out = np.zeros((len(x), 3) + feats.shape[2:])
    for b in range(len(x)):
        masks = channel_masks(feats[b].astype(np.float32), x.shape[2:]).astype(np.float64)
        scores = np.zeros((feats.shape[1], 3))
        for s, coef in enumerate(coefficients):
            for k in range(feats.shape[1]):
                mk = coef * masks[k] + (0 if noise is None else noise[s][k])
                scores[k] += _sigmoid(_model_logits(model, x[b][None] * mk[None, None]))[0]
        scores /= len(coefficients)
        e = np.exp(scores - scores.max(axis=0))
        alpha = e / e.sum(axis=0)
        out[b] = np.einsum("chw,ck->khw", feats[b], alpha)
    return out


def test_score_cam_at_an_inner_layer(tiny):
    x = _x(5)
    feats, _ = _features(tiny, x, INNER)
    _, m = _raw(tiny, x, "scorecam", layer=INNER, options={"batch_size": 7})
    _close(m, _score_reference(tiny, x, feats, (1.0,)), rel=1e-4)


def test_is_cam_integrates_from_black_to_the_mask(tiny):
    x = _x(6)
    feats, _ = _features(tiny, x, INNER)
    _, m = _raw(tiny, x, "iscam", layer=INNER, options={"steps": 4, "batch_size": 64})
    _close(m, _score_reference(tiny, x, feats, (0.25, 0.5, 0.75, 1.0)), rel=1e-4)


def test_ss_cam_smooths_the_masks_with_seeded_noise(tiny):
    x = _x(7, (1, 3, 64, 64))
    feats, _ = _features(tiny, x, INNER)
    n, std = 2, 0.5
    rng = np.random.default_rng(3)
    noise = [rng.standard_normal((feats.shape[1], 64, 64)).astype(np.float32) * std for _ in range(n)]
    _, m = _raw(tiny, x, "sscam", layer=INNER, options={"num_samples": n, "std": std, "seed": 3, "batch_size": 5})
    _close(m, _score_reference(tiny, x, feats, (1.0,) * n, noise), rel=1e-4)
    # the draws do not depend on the chunking
    _, m2 = _raw(tiny, x, "sscam", layer=INNER, options={"num_samples": n, "std": std, "seed": 3, "batch_size": 64})
    np.testing.assert_array_equal(m, m2)


def test_ablation_cam_at_an_inner_layer(tiny):
    """Each channel zeroed by a hook in its own forward pass, against the chunked method."""
    x = _x(8, (1, 3, 64, 64))
    layer = dict(tiny.named_sublayers())[INNER]
    feats, logits = _features(tiny, x, INNER)
    scores = np.zeros((feats.shape[1], 3))
    for k in range(feats.shape[1]):
        def hook(_l, _i, out, k=k):
            keep = np.ones((1, out.shape[1], 1, 1), np.float32)
            keep[0, k] = 0
            return out * paddle.to_tensor(keep)

        h = layer.register_forward_post_hook(hook)
        scores[k] = _model_logits(tiny, x)[0]
        h.remove()
    w = (logits[0][None] - scores) / np.abs(logits[0])[None]
    _, m = _raw(tiny, x, "ablationcam", layer=INNER, options={"batch_size": 6})
    _close(m[0], np.einsum("chw,ck->khw", feats[0], w), rel=1e-4)


def _grads(model, x, layer_name, c, target="logit"):
    """d y_c / d A at ``layer_name``, the plain way: one backward per class."""
    layer = dict(model.named_sublayers())[layer_name]
    xt = paddle.to_tensor(x)
    xt.stop_gradient = False
    with capture_output(layer, detach=False) as store:
        logits = model(xt)
    y = logits if target == "logit" else paddle.nn.functional.sigmoid(logits)
    (g,) = paddle.grad(y[:, c].sum(), store["output"])
    return store["output"].numpy().astype(np.float64), g.numpy().astype(np.float64)


def _replace_output(model, layer_name, value, x):
    layer = dict(model.named_sublayers())[layer_name]
    h = layer.register_forward_post_hook(lambda _l, _i, _o: paddle.to_tensor(value.astype(np.float32)))
    try:
        return _model_logits(model, x)
    finally:
        h.remove()


def test_inner_layer_gradients_match_central_differences(tiny):
    """The gradient the gradient CAMs use, against (y(A + e E) - y(A - e E)) / 2e at random positions."""
    x = _x(9, (1, 3, 64, 64))
    a, g = _grads(tiny, x, INNER, 1)
    rng = np.random.default_rng(0)
    for _ in range(6):
        idx = tuple(int(rng.integers(0, s)) for s in a.shape)
        e = np.zeros_like(a)
        e[idx] = 1e-2
        fd = (_replace_output(tiny, INNER, a + e, x)[0, 1] - _replace_output(tiny, INNER, a - e, x)[0, 1]) / 2e-2
        assert fd == pytest.approx(g[idx], rel=2e-2, abs=1e-5)
    # HiResCAM is sum_k g * A with exactly this gradient
    _, m = _raw(tiny, x, "hirescam", layer=INNER, classes=[1])
    _close(m[0, 0], (g * a).sum(axis=1)[0], rel=1e-5)


def test_inner_layer_gradient_formulas(tiny):
    x = _x(10)
    a, g = _grads(tiny, x, INNER, 2)
    refs = {
        "gradcam": np.einsum("bchw,bc->bhw", a, g.mean(axis=(2, 3))),
        "xgradcam": np.einsum("bchw,bc->bhw", a, (g * a / (a.sum(axis=(2, 3), keepdims=True) + 1e-7)).sum(axis=(2, 3))),
        "layercam": (np.maximum(g, 0) * a).sum(axis=1),
        "gradcam_elementwise": np.maximum(g * a, 0).sum(axis=1),
        "eigengradcam": first_component(g * a, center=True, reference=(g * a).sum(axis=1)),
    }
    g2, g3 = g ** 2, g ** 3
    denom = 2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3
    alpha = np.where(np.abs(denom) > 1e-12, g2 / np.where(np.abs(denom) > 1e-12, denom, 1), 0)
    refs["gradcampp"] = np.einsum("bchw,bc->bhw", a, (alpha * np.maximum(g, 0)).sum(axis=(2, 3)))
    for method, ref in refs.items():
        _, m = _raw(tiny, x, method, layer=INNER, classes=[2])
        _close(m[:, 0], ref, rel=1e-4)


def test_smooth_gradcampp_averages_the_derivatives_over_noisy_inputs(tiny):
    x = _x(11, (1, 3, 64, 64))
    n, std = 3, 0.4
    noise = (np.random.default_rng(5).standard_normal((n, 3, 64, 64)) * std).astype(np.float32)
    a, _ = _grads(tiny, x, INNER, 0)
    gs = np.stack([_grads(tiny, x + e[None], INNER, 0)[1] for e in noise])  # [n, 1, C, h, w]
    d1, d2, d3 = gs.mean(0), (gs ** 2).mean(0), (gs ** 3).mean(0)
    denom = 2 * d2 + a.sum(axis=(2, 3), keepdims=True) * d3
    alpha = np.where(np.abs(denom) > 1e-12, d2 / np.where(np.abs(denom) > 1e-12, denom, 1), 0)
    ref = np.einsum("bchw,bc->bhw", a, (alpha * np.maximum(d1, 0)).sum(axis=(2, 3)))
    _, m = _raw(tiny, x, "smoothgradcampp", layer=INNER, classes=[0],
                options={"num_samples": n, "std": std, "seed": 5})
    _close(m[:, 0], ref, rel=1e-4)


def test_shapley_cam_hessian_vector_product_against_differences_of_gradients(tiny):
    """w = mean(g - H A / 2) with H A = d/dt g((1 + t) A) at t = 0 (probability target: the sigmoid curves)."""
    x = _x(12, (1, 3, 64, 64))
    a, g = _grads(tiny, x, INNER, 1, target="probability")
    layer = dict(tiny.named_sublayers())[INNER]

    def grad_at(scale):
        xt = paddle.to_tensor(x)
        store = {}

        def hook(_l, _i, out):
            v = out * scale
            v.stop_gradient = False
            store["v"] = v
            return v

        h = layer.register_forward_post_hook(hook)
        try:
            y = paddle.nn.functional.sigmoid(tiny(xt))[:, 1].sum()
        finally:
            h.remove()
        (gv,) = paddle.grad(y, store["v"])
        return gv.numpy().astype(np.float64)

    eps = 1e-3
    hvp = (grad_at(1 + eps) - grad_at(1 - eps)) / (2 * eps)
    w = (g - 0.5 * hvp).mean(axis=(2, 3))
    _, m = _raw(tiny, x, "shapleycam", layer=INNER, classes=[1], target="probability")
    _close(m[:, 0], np.einsum("bchw,bc->bhw", a, w), rel=2e-3)
    _, gc = _raw(tiny, x, "gradcam", layer=INNER, classes=[1], target="probability")
    assert np.abs(m - gc).max() > 1e-3 * np.abs(gc).max()  # the second-order term is there
    assert not layer._forward_post_hooks and not any(
        lyr._forward_post_hooks for lyr in tiny.sublayers())  # the batch-norm hooks are gone


# ---------------------------------------------------------------------------------------------
# one call, every class; batches; seeds; hooks


@pytest.mark.parametrize("method", CAM_FAMILY)
def test_batch_classes_and_seed_behaviour(tiny, method):
    x = _x(13)
    p, m = _raw(tiny, x, method)
    assert m.shape[:2] == (2, 3) and np.isfinite(m).all()
    for b in range(2):  # a batch gives what its images give one by one
        pb, mb = _raw(tiny, x[b:b + 1], method)
        _close(mb[0], m[b], rel=1e-5)
        np.testing.assert_allclose(pb[0], p[b], atol=1e-6)
    _, m1 = _raw(tiny, x, method, classes=[1])  # classes=[k] is the k-th map of classes=None
    _close(m1[:, 0], m[:, 1], rel=1e-5)
    _, again = _raw(tiny, x, method)  # repeatable (seeded noise, seeded NMF)
    np.testing.assert_array_equal(m, again)
    hooks = [len(lyr._forward_post_hooks) for lyr in tiny.sublayers()]
    assert sum(hooks) == 0 and not tiny.training


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_masked_forwards_run_in_chunks(tiny, method):
    """Never more than batch_size masked (or ablated) images at a time, and C per image, shared by every class."""
    seen = []
    layer = INNER if method == "ablationcam" else None  # at the head's layer Ablation-CAM needs no forward
    original = tiny.forward

    def spy(x):
        seen.append(int(x.shape[0]))
        return original(x)

    tiny.forward = spy
    try:
        _raw(tiny, _x(14, (1, 3, 64, 64)), method, layer=layer, options={"batch_size": 5})
    finally:
        del tiny.forward
    n_ch = _features(tiny, _x(14, (1, 3, 64, 64)), layer)[0].shape[1]
    assert max(seen[1:]) <= 5 and sum(seen[1:]) == n_ch  # one image, every channel once, for all 3 classes


def test_unknown_method_and_options_are_one_line(tiny):
    with pytest.raises(chexcam.ChexcamError, match="unknown CAM method 'scorcam'.*scorecam"):
        chexcam.explain(tiny, _x(1), method="scorcam")
    with pytest.raises(chexcam.ChexcamError, match="takes no option 'step'.*steps"):
        chexcam.explain(tiny, _x(1), method="iscam", step=3)
    with pytest.raises(chexcam.ChexcamError, match="target='probability'"):
        chexcam.explain(tiny, _x(1), method="eigencam", target="probability")
    with pytest.raises(chexcam.ChexcamError, match="eigen_smooth does not apply"):
        chexcam.explain(tiny, _x(1), method="eigencam", eigen_smooth=True)


# ---------------------------------------------------------------------------------------------
# wrappers


def test_multi_layer_fusion(tiny):
    x = _x(15)
    layers = [INNER, "backbone.batch_norm"]
    per = [_raw(tiny, x, "gradcam", layer=name)[1] for name in layers]
    from chexcam.postprocess import normalize_maps, resize_maps

    up = [resize_maps(np.maximum(m, 0), (64, 64)) for m in per]
    _, fused = _raw(tiny, x, "gradcam", layer=layers)
    _close(fused, np.mean([normalize_maps(u, "minmax") for u in up], axis=0), rel=1e-5)
    _, lc = _raw(tiny, x, "layercam", layer=layers, fusion="layercam")
    per = [resize_maps(np.maximum(_raw(tiny, x, "layercam", layer=n)[1], 0), (64, 64)) for n in layers]
    ref = np.max([np.tanh(2 * u / u.max(axis=(2, 3), keepdims=True)) for u in per], axis=0)
    _close(lc, ref, rel=1e-5)


def test_aug_smooth_averages_flips_and_zooms_mapped_back(tiny):
    x = _x(16, (1, 3, 64, 64))
    from chexcam.data.transforms import Geometry
    from chexcam.postprocess import resize_maps

    acc = []
    for flip in (False, True):
        for zoom in AUG_ZOOMS:
            xa = x[..., ::-1].copy() if flip else x
            size = (round(64 * zoom), round(64 * zoom))
            if zoom != 1.0:
                xa = paddle.nn.functional.interpolate(paddle.to_tensor(xa), size=list(size), mode="bilinear",
                                                      align_corners=False).numpy()
            _, m = _raw(tiny, xa, "gradcam")
            geo = Geometry(64, 64, size[1] / 64, size[0] / 64, 0.0, 0.0, size[0], size[1])
            back = geo.maps_to_original(m[0])
            acc.append(back[..., ::-1] if flip else back)
    _, sm = _raw(tiny, x, "gradcam", aug_smooth=True)
    assert sm.shape == (1, 3, 64, 64)
    _close(sm[0], np.mean(acc, axis=0), rel=1e-5)
    assert resize_maps is not None


def test_eigen_smooth_is_the_first_component_of_the_weighted_activations(tiny):
    x = _x(17)
    a, g = _grads(tiny, x, INNER, 0)
    weighted = a * g.mean(axis=(2, 3))[:, :, None, None]
    _, m = _raw(tiny, x, "gradcam", layer=INNER, classes=[0], eigen_smooth=True)
    _close(m[:, 0], first_component(weighted), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# the fast engine


@pytest.mark.parametrize("method", ["scorecam", "iscam", "sscam"])
def test_explainer_runs_the_masked_forwards_on_the_predictor(tiny, method):
    opts = FAST.get(method, {})
    ex = chexcam.Explainer(tiny, method=method, **opts)
    assert ex.engine == "predictor"
    x = _x(18)
    p1, m1 = ex(x, normalize=False, upsample=False)
    p2, m2 = _raw(tiny, x, method)
    np.testing.assert_allclose(p1, p2, atol=1e-5)
    _close(m1, m2, rel=1e-4)
