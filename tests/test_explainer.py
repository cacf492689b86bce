"""chexcam.Explainer (the fast engine asked for by name) against chexcam.explain (the reference).

Every stale case of the old hidden cache is here as a regression test: another cam_layer, weights changed in
place, a BatchNorm buffer or epsilon changed, two models in one process, and no disk writes at all.
"""

import glob
import logging
import os
import tempfile

import numpy as np
import paddle
import pytest

import chexcam
from chexcam.data.io import read_image
from chexcam.data.transforms import eval_transform
from chexcam.serving import RTOL, Explainer, cpu_has_bf16
from chexcam.serving import explainer as explainer_mod

from .conftest import ROOT

CHEST_SAMPLES = os.path.join(ROOT, "data", "chestxray14_sample", "images")
MALARIA_SAMPLES = os.path.join(ROOT, "data", "malaria", "cell_images", "Parasitized")


def batch_of(cfg, folder, n=3):
    tf = eval_transform(cfg)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".png"))[:n]
    return np.stack([tf(read_image(os.path.join(folder, f)))[0] for f in files])


def rel_err(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))


def assert_same(ex, model, x, **kw):
    """Explainer == explain within 1e-5 (probabilities absolute, maps relative to their largest value)."""
    p1, m1 = chexcam.explain(model, x, method=ex.method, layer=ex.layer, **kw)
    p2, m2 = ex(x, **kw)
    assert m1.shape == m2.shape
    assert np.abs(p1 - p2).max() <= 1e-5
    assert rel_err(m2, m1) <= 1e-5, f"relative map error {rel_err(m2, m1):.1e}"


def _model(config, stride, seed=0):
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", config),
                              ["model.allow_random=true", f"model.output_stride={stride}"])
    paddle.seed(seed)
    model = chexcam.build_model(cfg)
    model.head.bias.set_value(paddle.linspace(-1, 1, cfg.model.num_classes))
    return cfg, model


@pytest.mark.parametrize("stride", [32, 16, 8])
@pytest.mark.parametrize("config,folder", [("chestxray14.yaml", CHEST_SAMPLES), ("malaria.yaml", MALARIA_SAMPLES)],
                         ids=["chestxray14", "malaria"])
def test_explainer_matches_explain_on_bundled_images(config, folder, stride):
    cfg, model = _model(config, stride)
    ex = Explainer(model, engine="predictor")
    assert ex.engine == "predictor" and ex.check_error <= RTOL["fp32"]
    x = batch_of(cfg, folder, n=2)
    assert_same(ex, model, x, normalize=False, upsample=False)
    assert_same(ex, model, x)  # upsampled, min-max normalized
    assert_same(ex, model, paddle.to_tensor(x[:1]), normalize="global", upsample=(50, 70), relu=True, classes=[0])


@pytest.fixture(scope="module")
def small():
    """The malaria config's model (small DenseNet, BatchNorm, GAP + Linear head): the stale cases."""
    return _model("malaria.yaml", 8, seed=5)


def test_changed_cam_layer_is_detected_and_refresh_follows_it(small, caplog):
    cfg, model = small
    ex = Explainer(model)
    x = batch_of(cfg, MALARIA_SAMPLES, 2)
    model.cam_layer = "backbone.dense_block_func_list.3"  # the block before the final norm: same channels
    try:
        with pytest.raises(chexcam.ChexcamError, match="cam_layer 'backbone.batch_norm' -> 'backbone.dense_block"):
            ex(x)
        with caplog.at_level(logging.WARNING, logger="chexcam"):
            ex.refresh()
        # the exported graph cannot stand in for another layer: auto falls back, and says why
        assert ex.engine == "dynamic" and "not the layer that feeds global pooling" in caplog.text
        assert_same(ex, model, x, normalize=False, upsample=False)
        with pytest.raises(chexcam.ChexcamError, match="predictor engine cannot serve"):
            Explainer(model, engine="predictor")
    finally:
        model.cam_layer = model.features_layer


def test_weights_changed_in_place_keep_the_snapshot_until_refresh(small):
    cfg, model = small
    x = batch_of(cfg, MALARIA_SAMPLES, 2)
    before = chexcam.explain(model, x, normalize=False, upsample=False)
    ex = Explainer(model)
    assert ex.stale() is None
    w = model.head.weight
    old = w.numpy().copy()
    try:
        w.set_value(old * 3.0)  # in place: paddle's version counter does not move on set_value
        assert ex.stale() == "'head.weight' changed"
        # the snapshot contract: the Explainer keeps explaining the weights it was built with
        p, m = ex(x, normalize=False, upsample=False)
        assert np.abs(p - before[0]).max() <= 1e-5 and rel_err(m, before[1]) <= 1e-5
        ex.refresh()
        assert ex.stale() is None
        assert_same(ex, model, x, normalize=False, upsample=False)
    finally:
        w.set_value(old)


def test_batchnorm_buffer_and_epsilon_changes(small):
    cfg, model = small
    x = batch_of(cfg, MALARIA_SAMPLES, 2)
    bn = model.backbone.batch_norm  # the final norm (+ ReLU) before pooling
    ex = Explainer(model)
    mean = bn._mean.numpy().copy()
    eps = bn._epsilon
    try:
        bn._mean.set_value(mean + 0.5)  # a running statistic (a buffer, not a parameter)
        assert "_mean" in ex.stale() or "batch_norm" in ex.stale()
        ex.refresh()
        assert_same(ex, model, x, normalize=False, upsample=False)
        bn._epsilon = 1e-2  # invisible to any weights fingerprint, read by the forward pass
        with pytest.raises(chexcam.ChexcamError, match="epsilon 1e-05 -> 0.01"):
            ex(x)
        ex.refresh()
        assert ex.engine == "predictor"
        assert_same(ex, model, x, normalize=False, upsample=False)
    finally:
        bn._mean.set_value(mean)
        bn._epsilon = eps


def test_two_models_in_one_process_do_not_mix():
    cfg, a = _model("malaria.yaml", 8, seed=1)
    _, b = _model("malaria.yaml", 8, seed=2)
    x = batch_of(cfg, MALARIA_SAMPLES, 3)
    ea, eb = Explainer(a), Explainer(b)
    assert_same(ea, a, x, normalize=False)
    assert_same(eb, b, x, normalize=False)
    assert np.abs(ea(x)[0] - eb(x)[0]).max() > 1e-4


def test_explain_and_explainer_write_nothing_to_disk(tmp_path, monkeypatch):
    """explain: no disk writes at all; the Explainer: only a temporary export folder, gone when it returns."""
    home, cache, tmp = tmp_path / "home", tmp_path / "cache", tmp_path / "tmp"
    for d in (home, cache, tmp):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CHEXCAM_CACHE_DIR", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    cfg, model = _model("malaria.yaml", 8)
    x = batch_of(cfg, MALARIA_SAMPLES, 2)
    chexcam.explain(model, x)
    chexcam.explain(model, x, method="gradcam")
    assert not any(os.scandir(home)) and not any(os.scandir(cache)) and not any(os.scandir(tmp))
    ex = Explainer(model)
    ex(x)
    assert ex.engine == "predictor"
    assert not any(os.scandir(cache)) and not any(os.scandir(tmp))
    # paddle.jit.to_static keeps its translated source in ~/.cache/paddle/to_static_tmp/<pid> and removes it
    # when the process exits (paddle's own atexit); nothing else lands in HOME
    written = [os.path.relpath(p, home) for p in glob.glob(os.path.join(home, "**"), recursive=True)
               if os.path.isfile(p)]
    assert all(w.startswith(os.path.join(".cache", "paddle", "to_static_tmp", str(os.getpid()))) for w in written)
    assert not glob.glob(os.path.join(str(home), ".cache", "chexcam*"))


def test_engine_choice_fallback_warning_and_errors(small, caplog):
    _, model = small
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype("float32")
    grad = Explainer(model, method="gradcam")  # the rule, not a fallback: no warning
    assert grad.engine == "dynamic"
    assert_same(grad, model, x, normalize=False)
    with pytest.raises(chexcam.ChexcamError, match="method 'gradcam' has no exported graph"):
        Explainer(model, method="gradcam", engine="predictor")
    handle = model.backbone.conv1_func.register_forward_post_hook(lambda *a: None)
    try:
        with caplog.at_level(logging.WARNING, logger="chexcam"):
            ex = Explainer(model)
        assert ex.engine == "dynamic" and "has forward hooks" in caplog.text
        with pytest.raises(chexcam.ChexcamError, match="forward hooks"):
            Explainer(model, engine="predictor")
    finally:
        handle.remove()
    assert Explainer(model, engine="dynamic").engine == "dynamic"
    with pytest.raises(chexcam.ChexcamError, match="unknown engine"):
        Explainer(model, engine="fast")
    with pytest.raises(chexcam.ChexcamError, match="unknown precision"):
        Explainer(model, precision="fp16")


def test_a_disagreeing_export_fails_loudly(monkeypatch):
    _, model = _model("malaria.yaml", 8)
    real = explainer_mod.Predictor.run
    monkeypatch.setattr(explainer_mod.Predictor, "run", lambda self, x: (lambda o: (o[0], o[1] * 1.001))(real(self, x)))
    with pytest.raises(chexcam.ChexcamError, match="differs from the dynamic graph by 1.0e-03"):
        Explainer(model, engine="predictor")
    with pytest.raises(chexcam.ChexcamError, match="differs from the dynamic graph"):
        Explainer(model)  # auto: a failed check is not a silent fallback either


def test_bf16_is_checked_or_refused():
    cfg, model = _model("malaria.yaml", 8)
    if not cpu_has_bf16():
        with pytest.raises(chexcam.ChexcamError, match="bf16 on CPU needs AVX512-BF16 or AMX"):
            Explainer(model, precision="bf16")
        return
    ex = Explainer(model, precision="bf16")
    assert ex.engine == "predictor" and ex.check_error <= RTOL["bf16"]
    x = batch_of(cfg, MALARIA_SAMPLES, 2)
    p1, _ = chexcam.explain(model, x)
    assert np.abs(ex(x)[0] - p1).max() < 0.05


def test_unusable_temporary_folder_falls_back_with_a_warning_or_fails_when_asked(tmp_path, monkeypatch, caplog):
    """There is no on-disk cache to go stale (nothing is reused across Explainers or processes); the one
    temporary export folder that cannot be made is a named reason, never a silent move elsewhere."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setattr(tempfile, "tempdir", str(blocker))
    _, model = _model("malaria.yaml", 8)
    with caplog.at_level(logging.WARNING, logger="chexcam"):
        ex = Explainer(model)
    assert ex.engine == "dynamic" and "cannot create a temporary folder for the export" in caplog.text
    with pytest.raises(chexcam.ChexcamError, match="cannot create a temporary folder"):
        Explainer(model, engine="predictor")
