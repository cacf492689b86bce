import numpy as np
import paddle
import pytest

import chexcam
from chexcam.registry import MODELS


@pytest.mark.parametrize("name", chexcam.list_models())
@pytest.mark.parametrize("stride", [32, 16, 8, 4])
def test_registered_models_give_logits_and_maps(name, stride):
    paddle.seed(0)
    model = chexcam.create_model(name, num_classes=3, output_stride=stride)
    model.eval()
    x = paddle.randn([2, 3, 64, 64])
    with paddle.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert list(logits.shape) == [2, 3]
    assert list(feats.shape) == [2, model.num_features, 64 // stride, 64 // stride]
    assert model.output_stride == stride and model.num_classes == 3
    _, maps = chexcam.explain(model, x.numpy(), normalize=False, upsample=False)
    assert maps.shape == (2, 3, 64 // stride, 64 // stride)
    _, up = chexcam.explain(model, x.numpy())
    assert up.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("stride", [8, 4])
def test_output_stride_adds_no_parameters(stride):
    a = chexcam.create_model("chexnet_densenet121", num_classes=14, output_stride=32)
    b = chexcam.create_model("chexnet_densenet121", num_classes=14, output_stride=stride)
    sa = {k: list(v.shape) for k, v in a.state_dict().items()}
    sb = {k: list(v.shape) for k, v in b.state_dict().items()}
    assert sa == sb


@pytest.mark.parametrize("name, size, side", [("densenet_small", 96, 24), ("chexnet_densenet121", 224, 56)])
def test_output_stride_4_maps_keep_the_cam_identity(name, size, side):
    """Stride 4 (every transition pooling removed): the stem's stride alone sets the map size, and
    mean_{x,y} M_c + b_c == logit_c still holds on the larger map."""
    paddle.seed(0)
    model = chexcam.create_model(name, num_classes=2, output_stride=4)
    model.eval()
    model.head.bias.set_value(paddle.to_tensor([-0.5, 0.5]))  # non-zero, so the identity checks the bias
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype("float32")
    with paddle.no_grad():
        logits = model(paddle.to_tensor(x)).numpy()
    _, maps = chexcam.explain(model, x, normalize=False, upsample=False)
    assert maps.shape == (1, 2, side, side)
    np.testing.assert_allclose(maps.mean(axis=(2, 3)) + model.head.bias.numpy(), logits, rtol=1e-4, atol=1e-5)


def test_unsupported_output_stride_is_a_clear_error():
    with pytest.raises(ValueError, match="4, 8, 16 or 32, got 2"):
        chexcam.create_model("densenet_small", output_stride=2)
    with pytest.raises(ValueError, match="4, 8, 16 or 32, got 64"):
        chexcam.create_model("chexnet_densenet121", output_stride=64)


def test_model_returns_logits_without_sigmoid(chest_model):
    names = {type(layer).__name__ for layer in chest_model.sublayers()}
    assert "Sigmoid" not in names
    paddle.seed(1)
    chest_model.head.bias.set_value(paddle.full([14], 5.0))  # logits far above 1
    try:
        with paddle.no_grad():
            logits = chest_model(paddle.randn([1, 3, 64, 64]))
        assert float(logits.max()) > 1.0
    finally:
        chest_model.head.bias.set_value(paddle.zeros([14]))


def test_registry_rejects_unknown_and_duplicate_names():
    with pytest.raises(chexcam.ConfigError, match="chexnet_densenet121"):
        chexcam.create_model("chexnet_densenet12")
    with pytest.raises(ValueError):
        MODELS.register("chexnet_densenet121")(lambda **kw: None)


def test_build_model_loads_weights(tmp_path, chest_cfg):
    paddle.seed(3)
    model = chexcam.build_model(chest_cfg)
    path = str(tmp_path / "w.pdparams")
    paddle.save(model.state_dict(), path)
    cfg = chexcam.load_config(chest_cfg.source, [f"model.weights={path}"])
    again = chexcam.build_model(cfg)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), again.state_dict()[k].numpy())


def test_wrong_shaped_weights_are_a_clear_error(tmp_path, chest_cfg):
    small = chexcam.create_model("chexnet_densenet121", num_classes=3)
    path = str(tmp_path / "w3.pdparams")
    paddle.save(small.state_dict(), path)
    cfg = chexcam.load_config(chest_cfg.source, [f"model.weights={path}"])
    with pytest.raises(chexcam.ChexcamError, match=r"shape mismatch at head\.weight \[1024, 3\] vs model \[1024, 14\]"):
        chexcam.build_model(cfg)
