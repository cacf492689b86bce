"""LIME: pinned to the reference ``lime`` package, through explain and the Explainer, all classes at once."""

import os
import shutil

import numpy as np
import paddle
import pytest
from paddle import nn

import chexcam
from chexcam import viz
from chexcam.cam import lime as L
from chexcam.data.io import read_image
from chexcam.data.transforms import SquareEvalTransform
from chexcam.labels import IMAGENET_MEAN, IMAGENET_STD
from chexcam.serving import Explainer

from .conftest import ROOT

CELLS = os.path.join(ROOT, "data", "malaria", "cell_images", "Parasitized")
SIZE = 32
N = 200
#: quickshift with LIME's defaults cuts a 32 px cell into one or two superpixels; SLIC gives a dozen
SLIC = {"segmentation": "slic", "n_segments": 12}


def cells(n=1, size=SIZE):
    tf = SquareEvalTransform(size, size, IMAGENET_MEAN, IMAGENET_STD)
    files = sorted(f for f in os.listdir(CELLS) if f.endswith(".png"))[:n]
    return np.stack([tf(read_image(os.path.join(CELLS, f)))[0] for f in files]).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    """A chexcam GAP + Linear model with three sigmoid outputs (multi-label), random weights."""
    paddle.seed(0)
    model = chexcam.create_model("densenet_tiny", num_classes=3, output_stride=8)
    model.head.bias.set_value(paddle.to_tensor([0.5, -0.5, 0.0]))
    model.labels = ("a", "b", "c")
    model.eval()
    return model


class SoftmaxNet(nn.Layer):
    """Convolutions, flatten, dense: four classes under one softmax."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2D(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2D(8))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 4))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("hide", ["mean", "segment"])
def test_agrees_with_the_lime_package_within_1e_6(tiny, hide):
    """Same segmentation, same perturbation matrix (lime's own draw from the same seed), same images: every
    class's superpixel weights, intercept and R^2 equal lime's LimeImageExplainer -> LimeBase."""
    lime_image = pytest.importorskip("lime.lime_image")
    x = cells(1)
    predict = L.model_predict_fn(tiny)
    seg = L.segment(L.rgb_image(x[0]), **SLIC)
    ours = L.lime_explain(predict, x, segments=seg, num_samples=N, seed=7, hide_color=hide)
    assert seg.max() >= 3  # a real segmentation, not one superpixel

    explainer = lime_image.LimeImageExplainer(kernel_width=0.25, random_state=7, feature_selection="auto")
    exp = explainer.explain_instance(
        x[0].transpose(1, 2, 0), lambda imgs: predict(np.asarray(imgs, np.float32).transpose(0, 3, 1, 2)),
        labels=(0, 1, 2), top_labels=None, hide_color=None if hide == "segment" else x[0].mean(axis=(1, 2)),
        num_samples=N, batch_size=50, segmentation_fn=lambda img: seg, random_seed=0)
    for k in range(3):
        ref = np.zeros(seg.max() + 1)
        for s, w in exp.local_exp[k]:
            ref[s] = w
        np.testing.assert_allclose(ours.weights[0][k], ref, rtol=0, atol=1e-6)
        assert abs(ours.intercept[0, k] - exp.intercept[k]) < 1e-6
    assert abs(ours.score[0, 2] - exp.score) < 1e-6  # lime keeps the last class's score only


def test_lime_base_on_the_same_matrix(tiny):
    """The regression alone: our one multi-output ridge == lime's LimeBase, one call per class."""
    lime_base = pytest.importorskip("lime.lime_base")
    z = L.perturbation_matrix(N, 9, seed=3)
    y = np.random.default_rng(0).uniform(size=(N, 4))
    pi = L.kernel_weights(z, 0.25)
    coef, icpt, score, local = L.fit_local_models(z, y, pi, alpha=1.0)
    base = lime_base.LimeBase(lambda d: np.sqrt(np.exp(-(d ** 2) / 0.25 ** 2)), random_state=0)
    import sklearn.metrics

    d = sklearn.metrics.pairwise_distances(z, z[0].reshape(1, -1), metric="cosine").ravel()
    for k in range(4):
        b0, exp, r2, lp = base.explain_instance_with_data(z, y, d, k, num_features=100000)
        ref = np.zeros(9)
        for s, w in exp:
            ref[s] = w
        np.testing.assert_allclose(coef[k], ref, atol=1e-9)
        assert abs(icpt[k] - b0) < 1e-9 and abs(score[k] - r2) < 1e-9 and abs(local[k] - lp[0]) < 1e-9


def test_recovers_a_linear_model_of_the_superpixels():
    """A 'model' whose probability is 0.2 + 0.6 * (share of a fixed region shown): LIME's weights are that
    share per superpixel (ridge shrinkage aside), the map is each pixel's superpixel weight."""
    x = cells(1)
    seg = L.segment(L.rgb_image(x[0]), **SLIC)
    region = np.zeros((SIZE, SIZE), bool)
    region[8:20, 10:24] = True
    ref = x[0]

    def predict(batch):
        shown = np.all(np.isclose(batch, ref[None]), axis=1)  # [n, H, W] pixel unchanged
        return (0.2 + 0.6 * (shown & region).sum(axis=(1, 2)) / region.sum())[:, None]

    res = L.lime_explain(predict, x, segments=seg, num_samples=N, seed=1)
    share = np.array([(region & (seg == s)).sum() for s in range(seg.max() + 1)]) * 0.6 / region.sum()
    np.testing.assert_allclose(res.weights[0][0], share, atol=0.02)
    assert res.score[0, 0] > 0.99
    np.testing.assert_allclose(res.maps[0, 0], res.weights[0][0][seg], rtol=1e-6)
    assert set(res.top_superpixels(0, 0, num=2)) <= set(np.flatnonzero(share > 0))


def test_each_distinct_perturbation_is_forwarded_once():
    """With 3 superpixels 200 rows hold at most 8 distinct images: 8 go through the model, and the regression
    still sees all 200 rows (the same weights as forwarding every row)."""
    x = cells(1)
    seg = np.zeros((SIZE, SIZE), np.int64)
    seg[:, 12:] = 1
    seg[20:, :] = 2
    seen = []

    def predict(batch):
        seen.append(len(batch))
        return np.stack([batch.mean(axis=(1, 2, 3)), batch[:, 0, :16].std(axis=(1, 2))], axis=1)

    res = L.lime_explain(predict, x, segments=seg, num_samples=N, seed=2)
    assert sum(seen) == res.timing["images"] <= 8
    z = L.perturbation_matrix(N, 3, seed=2)
    y = predict(L.perturbed_images(x[0], L.hidden_image(x[0], seg), seg, z))
    coef, icpt, _, _ = L.fit_local_models(z, y, L.kernel_weights(z))
    np.testing.assert_allclose(res.weights[0], coef, atol=1e-9)
    np.testing.assert_allclose(res.intercept[0], icpt, atol=1e-9)


def test_explain_and_explainer_lime_all_classes_one_pass(tiny):
    x = cells(2)
    res = chexcam.explain(tiny, x, method="lime", normalize=False, upsample=False, num_samples=N, **SLIC)
    probs, maps = res  # unpacks like every method
    assert maps.shape == (2, 3, SIZE, SIZE) and res.segments.shape == (2, SIZE, SIZE)
    assert np.array_equal(res.classes, np.tile([0, 1, 2], (2, 1)))
    for b in range(2):  # piecewise constant: one value per superpixel, the weight
        np.testing.assert_allclose(maps[b], res.weights[b][:, res.segments[b]], rtol=1e-6)
    with paddle.no_grad():
        ref = paddle.nn.functional.sigmoid(tiny(paddle.to_tensor(x))).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    # batched == one by one (one seed, the same perturbations for every image)
    one = chexcam.explain(tiny, x[1:], method="lime", normalize=False, upsample=False, num_samples=N, **SLIC)
    np.testing.assert_allclose(one.maps[0], maps[1], atol=1e-7)
    # a class subset by name comes from the same perturbations
    sub = chexcam.explain(tiny, x, method="lime", classes=["c", "a"], normalize=False, upsample=False, num_samples=N,
                          **SLIC)
    np.testing.assert_allclose(sub.maps, maps[:, [2, 0]], atol=1e-7)
    # the Explainer runs the forward passes on its predictor: the same weights
    ex = Explainer(tiny, method="lime", engine="predictor", num_samples=N, **SLIC)
    assert ex.engine == "predictor"
    fast = ex(x, normalize=False, upsample=False)
    np.testing.assert_array_equal(fast.segments, res.segments)
    np.testing.assert_allclose(fast.maps, maps, atol=1e-5)
    np.testing.assert_allclose(ex.predict(x), probs, atol=1e-5)
    # post-processing as every method: min-max per map, upsampling
    _, norm = ex(x, upsample=(40, 40))
    assert norm.shape == (2, 3, 40, 40) and norm.min() >= 0 and norm.max() <= 1


def test_softmax_model_predicted_class_and_seeds():
    paddle.seed(3)
    net = SoftmaxNet()
    x = cells(2)
    res = chexcam.explain(net, x, method="lime", classes="predicted", activation="softmax", normalize=False,
                          num_samples=N, **SLIC)
    np.testing.assert_allclose(res.probs.sum(axis=1), 1.0, atol=1e-5)
    assert res.maps.shape == (2, 1, SIZE, SIZE)
    np.testing.assert_array_equal(res.classes[:, 0], res.probs.argmax(axis=1))
    again = chexcam.explain(net, x, method="lime", classes="predicted", activation="softmax", normalize=False,
                            num_samples=N, **SLIC)
    np.testing.assert_array_equal(again.maps, res.maps)
    other = chexcam.explain(net, x, method="lime", classes="predicted", activation="softmax", normalize=False,
                            num_samples=N, seed=1, **SLIC)
    assert not np.array_equal(other.maps, res.maps)
    quick = chexcam.explain(net, cells(1, 96), method="lime", activation="softmax", num_samples=N)
    assert 3 <= quick.segments[0].max() + 1 <= 12  # quickshift with LIME's defaults on a 96 px cell


def test_model_left_as_found_and_clear_errors(tiny):
    x = cells(1)
    tiny.train()
    hooks = [len(m._forward_post_hooks) for m in tiny.sublayers()]
    try:
        chexcam.explain(tiny, x, method="lime", num_samples=20)
        assert tiny.training
    finally:
        tiny.eval()
    assert hooks == [len(m._forward_post_hooks) for m in tiny.sublayers()]
    assert all(p.grad is None for p in tiny.parameters())
    with pytest.raises(chexcam.ChexcamError, match="explains no layer"):
        chexcam.explain(tiny, x, method="lime", layer="backbone.batch_norm")
    with pytest.raises(chexcam.ChexcamError, match="did you mean 'num_samples'"):
        chexcam.explain(tiny, x, method="lime", num_sample=10)
    with pytest.raises(chexcam.ChexcamError, match="takes no option 'num_samples'"):
        chexcam.explain(tiny, x, method="gradcam", num_samples=10)
    with pytest.raises(chexcam.ChexcamError, match="probability"):
        chexcam.explain(tiny, x, method="lime", target="logit")
    with pytest.raises(chexcam.ChexcamError, match="segmentation"):
        chexcam.explain(tiny, x, method="lime", segmentation="felzenszwalb")


def test_boundaries_of_the_top_superpixels_are_drawn():
    img = np.full((40, 40, 3), 100, np.uint8)
    seg = np.zeros((20, 20), np.int64)
    seg[:, 10:] = 1
    seg[10:, :10] = 2
    out = viz.mark_superpixels(img, seg, keep=[1], color=(255, 255, 0))
    changed = np.any(out != img, axis=2)
    assert changed.any() and not changed[:, :16].any()  # only around superpixel 1 (right half, x >= 20)
    assert (out[changed] == (255, 255, 0)).all()
    np.testing.assert_array_equal(viz.mark_superpixels(img, seg, keep=[]), img)
    maps = np.random.default_rng(0).uniform(size=(2, 20, 20)).astype(np.float32)
    plain = viz.mosaic(img, maps, ["a", "b"], tile=64, with_colorbar=False)
    sheet = viz.mosaic(img, maps, ["a", "b"], tile=64, with_colorbar=False, segments=seg, keep=[[1], []])
    assert sheet.shape == plain.shape
    differ = np.any(sheet != plain, axis=2)
    # tile "a" (x in [72, 136)) outlines superpixel 1 (its right half); tile "b" keeps nothing: unchanged
    assert differ[:, 72 + 32:136].any() and not differ[:, 72:72 + 28].any() and not differ[:, 140:].any()
    assert (sheet[20:][differ[20:]] == (255, 255, 0)).all()  # below the title bar (it blends what it covers)
    with pytest.raises(ValueError, match="keep"):
        viz.mosaic(img, maps, ["a", "b"], segments=seg)
    # contact sheets (render_mosaic.py): the heatmap tile outlines, the boxes tile does not
    heat, boxed = viz.cell_tiles(img, maps[0], [], 40, segments=seg, keep=[1])
    heat0, boxed0 = viz.cell_tiles(img, maps[0], [], 40)
    np.testing.assert_array_equal(boxed, boxed0)
    changed = np.any(heat != heat0, axis=2)
    assert changed[:, 20:].any() and not changed[:, :16].any() and (heat[changed] == (255, 255, 0)).all()


def test_labels_go_back_to_the_original_by_nearest_neighbour():
    from chexcam.data.transforms import EvalTransform

    seg = np.arange(16, dtype=np.int64).reshape(4, 4)
    g = SquareEvalTransform(4, 4, IMAGENET_MEAN, IMAGENET_STD)(np.zeros((8, 12, 3), np.uint8))[1]
    np.testing.assert_array_equal(g.labels_to_original(seg), np.repeat(np.repeat(seg, 2, 0), 3, 1))
    # shorter side to 4, centre crop 2: the original's outer columns and rows lie outside the crop (-1)
    g = EvalTransform(4, 2, IMAGENET_MEAN, IMAGENET_STD)(np.zeros((8, 8, 3), np.uint8))[1]
    out = g.labels_to_original(np.array([[0, 1], [2, 3]]))
    want = np.full((8, 8), -1)
    want[2:4, 2:4], want[2:4, 4:6], want[4:6, 2:4], want[4:6, 4:6] = 0, 1, 2, 3
    np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="network input"):
        g.labels_to_original(seg)


def test_infer_cam_with_lime_outlines_the_top_superpixels(tmp_path):
    """``cam.method: lime`` through the per-image tool: each record lists its class's top superpixels (those of
    a direct Explainer call with the ``lime`` section's options), the npz carries the superpixels in the
    original's pixels, and the mosaic's class tile outlines them (``lime.top=0``: the same mosaic, no outline)."""
    import json

    import cv2

    from chexcam.data.transforms import eval_transform
    from chexcam.engine import infer

    files = sorted(f for f in os.listdir(CELLS) if f.endswith(".png"))[:2]
    inp = tmp_path / "in"
    inp.mkdir()
    for f in files:
        shutil.copy(os.path.join(CELLS, f), inp / f)
    malaria = os.path.join(ROOT, "configs", "malaria.yaml")
    common = ["model.name=densenet_tiny", "model.allow_random=true", "device=cpu", "data.resize=48", "data.crop=48",
              "infer.tile=96", f"infer.input={inp}", "cam.method=lime", "lime.num_samples=60", "lime.n_segments=20",
              "infer.save_npz=true", "infer.draw_boxes=none", "infer.colorbar=false"]
    runs = {}
    for top in (3, 0):
        cfg = chexcam.load_config(malaria, common + [f"lime.top={top}", f"output_dir={tmp_path / f'top{top}'}"])
        paddle.seed(0)
        runs[top] = (cfg, infer.run(cfg, workers=0))
        assert runs[top][1]["images"] == 2
    cfg, summary = runs[3]
    paddle.seed(0)
    model = infer.load_model(cfg)
    ex = infer.explainer_from_config(cfg, model)
    assert ex.method == "lime" and ex.options["n_segments"] == 20 and ex.options["num_samples"] == 60
    outlines = 0
    for f in files:
        stem = os.path.splitext(f)[0]
        x, g = eval_transform(cfg)(read_image(str(inp / f)))
        res = ex(x[None], normalize=False, upsample=False)
        rec = json.load(open(os.path.join(summary["output_dir"], f"{stem}.json")))
        top = [int(v) for v in res.top_superpixels(0, 0, 3)]
        assert rec["classes"]["Parasitized"]["top_superpixels"] == top
        outlines += len(top)
        assert rec["superpixels"] == int(res.segments[0].max()) + 1
        npz = np.load(os.path.join(summary["output_dir"], f"{stem}_maps.npz"))
        np.testing.assert_array_equal(npz["segments"], g.labels_to_original(res.segments[0]))
        outlined = cv2.imread(os.path.join(summary["output_dir"], f"{stem}_cam.png"))[..., ::-1]
        plain = cv2.imread(os.path.join(runs[0][1]["output_dir"], f"{stem}_cam.png"))[..., ::-1]
        differ = np.any(outlined != plain, axis=2)
        if not top:  # random weights: no superpixel of this cell raises the probability, nothing is outlined
            assert not differ.any()
            continue
        assert differ[:, :96].sum() == 0 and differ[:, 100:].sum() > 20  # the class tile only, not the original
        below = differ.copy()
        below[:22] = False  # under the title bar the outline is blended
        assert below.any() and (outlined[below] == (255, 255, 0)).all()
    assert outlines >= 1


def test_lime_section_is_checked():
    malaria = os.path.join(ROOT, "configs", "malaria.yaml")
    for bad, msg in (("lime.num_samples=0", "lime.num_samples"), ("lime.kernel_width=0", "lime.kernel_width"),
                     ("lime.segmentation=felzenszwalb", "lime.segmentation"), ("lime.num_sample=5", "num_samples")):
        with pytest.raises(chexcam.ChexcamError, match=msg):
            chexcam.load_config(malaria, [bad])
    with pytest.raises(chexcam.ChexcamError, match="ten_crop"):
        chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"), ["cam.method=lime", "infer.ten_crop=true"])
