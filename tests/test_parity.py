"""Parity with PyTorch: converted torchvision / CheXNet-release weights give the same probabilities and CAMs.

Needs the ``[parity]`` extra (torch, torchvision) and the real NIH images in ../shared/data; skipped with
a reason otherwise. Both frameworks see the very same numpy batch (chexcam's numpy preprocessing).
"""

import os
import re

import numpy as np
import pytest

import chexcam
from chexcam.convert import convert_file
from chexcam.data.io import read_image
from chexcam.data.transforms import eval_transform
from chexcam.errors import WeightsError

from .conftest import ROOT

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[parity]')")
torchvision = pytest.importorskip("torchvision", reason="parity tests need torchvision (pip install -e '.[parity]')")

pytestmark = pytest.mark.parity

_NEW_TO_OLD = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")


def random_densenet(num_classes=14, seed=0):
    """A torchvision DenseNet121 with random weights *and* random BatchNorm statistics (so they are tested)."""
    torch.manual_seed(seed)
    net = torchvision.models.densenet121(weights=None, num_classes=num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
        net.classifier.weight.mul_(20.0)  # spread the probabilities away from 0.5
        net.classifier.bias.copy_(torch.linspace(-1, 1, num_classes))
    return net.eval()


def save_chexnet_release(net, path):
    """Format (a): {'state_dict': ...} with 'module.densenet121.' keys, torchvision<0.4 names, Sequential head."""
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # the 2017 release predates this buffer
        key = _NEW_TO_OLD.sub(lambda m: f"{m.group(1)}.{m.group(2)}.", key)
        key = key.replace("classifier.", "classifier.0.")
        state["module.densenet121." + key] = value
    torch.save({"epoch": 1, "arch": "densenet121", "state_dict": state}, path)
    return state


@pytest.fixture(scope="module")
def nih_batch():
    """The real NIH X-rays bundled with the repository (a newcomer with torch needs nothing else)."""
    folder = os.path.join(ROOT, "data", "chestxray14_sample", "images")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    assert len(files) >= 3
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"))
    tf = eval_transform(cfg)
    return np.stack([tf(read_image(os.path.join(folder, f)))[0] for f in files]).astype(np.float32)


def torch_reference(net, x):
    """Sigmoid probabilities and the reference CAM: relu(features(x)) weighted by the classifier rows."""
    with torch.no_grad():
        xt = torch.from_numpy(x)
        probs = torch.sigmoid(net(xt)).numpy()
        feats = torch.relu(net.features(xt))
        cams = torch.einsum("bchw,kc->bkhw", feats, net.classifier.weight).numpy()
    return probs, cams


def _load(path, num_classes=14):
    labels = list(chexcam.CHESTXRAY14_LABELS) if num_classes == 14 else [f"c{i}" for i in range(num_classes)]
    cfg = chexcam.load_config(os.path.join(ROOT, "configs", "chestxray14.yaml"),
                              [f"model.weights={path}", f"model.num_classes={num_classes}", f"data.labels={labels}"])
    return chexcam.build_model(cfg)


def _check(model, net, x):
    ref_p, ref_cam = torch_reference(net, x)
    probs, cams = chexcam.explain(model, x, normalize=False, upsample=False)
    assert probs.shape == ref_p.shape and cams.shape == ref_cam.shape
    assert 0.05 < ref_p.std()  # a meaningful comparison, not all 0.5
    np.testing.assert_allclose(probs, ref_p, atol=1e-5, rtol=0)
    rel = np.abs(cams - ref_cam).max() / np.abs(ref_cam).max()
    assert rel < 1e-4, f"CAM relative error {rel:.2e}"


def test_chexnet_release_format_parity(tmp_path, nih_batch):
    net = random_densenet(14, seed=0)
    src = tmp_path / "model.pth.tar"
    save_chexnet_release(net, src)
    out = tmp_path / "chexnet.pdparams"
    report = convert_file(str(src), str(out))
    assert report["source_format"] == "chexnet_pth" and report["num_classes"] == 14
    assert report["stripped_prefix"] == "module.densenet121."
    assert os.path.isfile(tmp_path / "chexnet.convert.json")
    _check(_load(str(out)), net, nih_batch)


def test_torchvision_format_parity_any_head_size(tmp_path, nih_batch):
    net = random_densenet(5, seed=1)
    src = tmp_path / "densenet121.pth"
    torch.save(net.state_dict(), src)
    out = tmp_path / "tv.pdparams"
    report = convert_file(str(src), str(out))
    assert report["source_format"] == "torchvision" and report["num_classes"] == 5
    assert len(report["ignored"]) == 121  # num_batches_tracked of every BatchNorm
    _check(_load(str(out), num_classes=5), net, nih_batch)


def test_renamed_key_fails_naming_it_and_writes_nothing(tmp_path):
    net = random_densenet(14, seed=2)
    state = save_chexnet_release(net, tmp_path / "ok.pth.tar")
    bad_key = "module.densenet121.features.denseblock2.denselayer3.conv.2.weight"
    renamed = bad_key.replace("conv.2", "conv_2")
    state[renamed] = state.pop(bad_key)
    torch.save({"state_dict": state}, tmp_path / "bad.pth.tar")
    out = tmp_path / "bad.pdparams"
    with pytest.raises(WeightsError, match=re.escape(renamed)):
        convert_file(str(tmp_path / "bad.pth.tar"), str(out))
    assert sorted(os.listdir(tmp_path)) == ["bad.pth.tar", "ok.pth.tar"]


class Opaque:
    """Anything but tensors and containers: chexcam's reader refuses to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    net = random_densenet(2, seed=3)
    torch.save({"state_dict": net.state_dict(), "extra": Opaque()}, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match=r"refused to load .*odd\.pth: it references tests\.test_parity\.Opaque"):
        convert_file(str(tmp_path / "odd.pth"), str(tmp_path / "odd.pdparams"))
    assert not os.path.exists(tmp_path / "odd.pdparams")
