"""The safe loader: torch-free PyTorch checkpoints (zip and legacy), paddle.save files, malicious pickles refused.

Hand-made PyTorch files are written here with ``pickle`` alone (the layout of torch 0.3's ``model.pth.tar``
and of the zip format), so most tests need no torch; the ``parity`` ones compare with ``torch.load``.
"""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import chexcam
from chexcam import serialization
from chexcam.errors import WeightsError
from chexcam.weights import read_checkpoint

from .conftest import ROOT
from .test_data import MALARIA, make_csv_dataset, tiny_overrides

# ---------------------------------------------------------------------------------------------
# a tiny torch.save without torch


class _Global:
    """A module-level name such as ``torch._utils._rebuild_tensor``, written as a pickle GLOBAL."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce wants a callable; it is never called here
        raise AssertionError("only pickled")


class FakeStorage:
    """A flat numpy array standing for a torch storage (``view`` = (root, offset, size) for torch < 1.6 views)."""

    def __init__(self, array, type_name, key, module="torch", location="cpu", view=None):
        self.array, self.type_name, self.key, self.module, self.location = array.ravel(), type_name, key, module, location
        self.view = view


class FakeTensor:
    """(storage, offset, size, stride) pickled as torch does: ``_rebuild_tensor`` (0.3) or ``_rebuild_tensor_v2``."""

    def __init__(self, storage, offset, size, stride, v2=True):
        self.args = (storage, offset, tuple(size), tuple(stride))
        self.v2 = v2

    def __reduce__(self):
        if self.v2:
            return _Global("torch._utils", "_rebuild_tensor_v2"), self.args + (False, OrderedDict())
        return _Global("torch._utils", "_rebuild_tensor"), self.args

    def expected(self):
        storage, offset, size, stride = self.args
        flat = storage.array
        item = flat.dtype.itemsize
        return np.array(np.lib.stride_tricks.as_strided(flat[offset:], size, [s * item for s in stride]))


class _TorchPickler(pickle._Pickler):
    """Pickles storages as persistent ids and :class:`_Global` as GLOBAL, like torch.save's pickler."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy, self.storages = legacy, {}

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if not isinstance(obj, FakeStorage):
            return None
        kind = _Global(obj.module, obj.type_name)
        if obj.view is not None:
            root, offset, size = obj.view
            self.storages[root.key] = root
            return "storage", kind, root.key, obj.location, root.array.size, (obj.key, offset, size)
        self.storages[obj.key] = obj
        if self.legacy:
            return "storage", kind, obj.key, obj.location, obj.array.size, None
        return "storage", kind, obj.key, obj.location, obj.array.size


def write_legacy(path, obj):
    """The pre-1.6 format: magic, protocol, sys_info, the object, storage keys, then count + bytes per storage."""
    with open(path, "wb") as fh:
        for head in (serialization.MAGIC_NUMBER, serialization.PROTOCOL_VERSION,
                     {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(head, fh, protocol=2)
        pickler = _TorchPickler(fh, legacy=True)
        pickler.dump(obj)
        pickle.dump(list(pickler.storages), fh, protocol=2)
        for st in pickler.storages.values():
            fh.write(struct.pack("<q", st.array.size))
            fh.write(st.array.astype(st.array.dtype.newbyteorder("<")).tobytes())


def write_zip(path, obj, byteorder="little", root="archive"):
    buf = io.BytesIO()
    pickler = _TorchPickler(buf, legacy=False)
    pickler.dump(obj)
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/data.pkl", buf.getvalue())
        zf.writestr(f"{root}/byteorder", byteorder)
        for key, st in pickler.storages.items():
            zf.writestr(f"{root}/data/{key}", st.array.astype(st.array.dtype.newbyteorder(order)).tobytes())
        zf.writestr(f"{root}/version", "3\n")


def chexnet_like(v2, module="torch", location="cpu"):
    """The CheXNet release's layout: epoch, arch, a DataParallel state_dict, best_loss, optimizer state.

    Tensors include a non-contiguous (transposed) one, two sharing a storage at an offset, fp16, int64, bool.
    """
    rng = np.random.default_rng(0)
    key = iter(["94131", "94132", "94133", "94134", "94135", "94136"] if not v2 else map(str, range(6)))
    conv = FakeStorage(rng.standard_normal(4 * 3 * 2 * 2).astype(np.float32), "FloatStorage", next(key), module, location)
    bn = FakeStorage(rng.standard_normal(8).astype(np.float32), "FloatStorage", next(key), module, location)
    head = FakeStorage(rng.standard_normal(14 * 4).astype(np.float32), "FloatStorage", next(key), module, location)
    half = FakeStorage(rng.standard_normal(6).astype(np.float16), "HalfStorage", next(key), module, location)
    long = FakeStorage(np.arange(-3, 4, dtype=np.int64), "LongStorage", next(key), module, location)
    flags = FakeStorage(np.array([True, False, True]), "BoolStorage", next(key), module, location)
    p = "module.densenet121."
    state = OrderedDict([
        (p + "features.conv0.weight", FakeTensor(conv, 0, (4, 3, 2, 2), (12, 4, 2, 1), v2)),
        (p + "features.norm0.running_mean", FakeTensor(bn, 0, (4,), (1,), v2)),
        (p + "features.norm0.running_var", FakeTensor(bn, 4, (4,), (1,), v2)),  # same storage, offset 4
        (p + "classifier.0.weight", FakeTensor(head, 0, (14, 4), (1, 14), v2)),  # transposed: strides (1, 14)
        (p + "features.norm0.weight", FakeTensor(half, 1, (2, 2), (1, 2), v2)),
        (p + "steps", FakeTensor(long, 2, (5,), (1,), v2)),
        (p + "mask", FakeTensor(flags, 0, (3,), (1,), v2)),
    ])
    obj = {"epoch": 7, "arch": "densenet121", "state_dict": state, "best_loss": 0.1234,
           "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                                                        "weight_decay": 1e-5, "params": [140001, 140002]}]}}
    expected = {k: t.expected() for k, t in state.items()}
    return obj, expected


def _check_chexnet_like(got, expected):
    assert got["epoch"] == 7 and got["arch"] == "densenet121" and got["best_loss"] == 0.1234
    assert got["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert isinstance(got["state_dict"], OrderedDict) and list(got["state_dict"]) == list(expected)
    for k, want in expected.items():
        arr = got["state_dict"][k]
        assert arr.dtype == want.dtype and arr.shape == want.shape and np.array_equal(arr, want), k
        assert arr.flags.c_contiguous and arr.flags.writeable, k


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy_0.3", "zip"])
def test_hand_made_checkpoints_read_without_torch(tmp_path, legacy):
    path = str(tmp_path / "model.pth.tar")
    if legacy:  # torch 0.3: _rebuild_tensor, CUDA storages, string keys of storage addresses
        obj, expected = chexnet_like(v2=False, module="torch.cuda", location="cuda:0")
        write_legacy(path, obj)
    else:
        obj, expected = chexnet_like(v2=True)
        write_zip(path, obj)
    assert serialization.sniff(path) == ("torch_legacy" if legacy else "torch_zip")
    kind, got = serialization.load(path)
    assert kind == "torch"
    _check_chexnet_like(got, expected)


def test_legacy_storage_views_and_big_endian_zip(tmp_path):
    root = FakeStorage(np.arange(10, dtype=np.float64), "DoubleStorage", "1")
    view = FakeStorage(root.array[3:8], "DoubleStorage", "2", view=(root, 3, 5))  # torch < 1.6 storage view
    write_legacy(str(tmp_path / "view.pth"), {"v": FakeTensor(view, 1, (2, 2), (2, 1), v2=False)})
    np.testing.assert_array_equal(serialization.load_torch(str(tmp_path / "view.pth"))["v"], [[4, 5], [6, 7]])

    f32 = FakeStorage(np.linspace(-1, 1, 6, dtype=np.float32), "FloatStorage", "0")
    i64 = FakeStorage(np.array([1, -2, 3 << 40], np.int64), "LongStorage", "1")
    f16 = FakeStorage(np.array([0.5, -2.0], np.float16), "HalfStorage", "2")
    obj = {"f": FakeTensor(f32, 0, (2, 3), (3, 1)), "i": FakeTensor(i64, 0, (3,), (1,)), "h": FakeTensor(f16, 0, (2,), (1,))}
    write_zip(str(tmp_path / "be.pth"), obj, byteorder="big", root="be")
    got = serialization.load_torch(str(tmp_path / "be.pth"))
    for k, t in obj.items():
        assert got[k].dtype == t.expected().dtype and got[k].dtype.isnative
        np.testing.assert_array_equal(got[k], t.expected())


def test_reader_works_with_torch_not_importable(tmp_path):
    """What CI proves by having no torch: a subprocess where ``import torch`` fails reads both formats."""
    obj, expected = chexnet_like(v2=False, module="torch.cuda", location="cuda:0")
    write_legacy(str(tmp_path / "legacy.pth.tar"), obj)
    obj, _ = chexnet_like(v2=True)
    write_zip(str(tmp_path / "zip.pth"), obj)
    np.savez(str(tmp_path / "expected.npz"), **{k.replace(".", "|"): v for k, v in expected.items()})
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import numpy as np
        from chexcam import serialization
        want = {{k.replace("|", "."): v for k, v in np.load({str(tmp_path / "expected.npz")!r}).items()}}
        for name in ("legacy.pth.tar", "zip.pth"):
            got = serialization.load_torch({str(tmp_path)!r} + "/" + name)["state_dict"]
            assert list(got) == list(want), name
            assert all(got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want), name
        assert sys.modules["torch"] is None and "paddle" not in sys.modules
        print("read", len(want), "tensors twice without torch")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "read 7 tensors twice without torch" in proc.stdout


def test_corrupt_files_are_one_line_errors(tmp_path):
    st = FakeStorage(np.zeros(4, np.float32), "FloatStorage", "0")
    write_zip(str(tmp_path / "oob.pth"), {"w": FakeTensor(st, 2, (2, 2), (2, 1))})  # needs elements 2..5 of 4
    with pytest.raises(WeightsError, match=r"reads past the end of its 4-element storage 0"):
        serialization.load_torch(str(tmp_path / "oob.pth"))
    obj, _ = chexnet_like(v2=False)
    write_legacy(str(tmp_path / "full.pth"), obj)
    data = open(tmp_path / "full.pth", "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[:-2])
    with pytest.raises(WeightsError, match=r"cannot read .*cut\.pth: truncated in storage"):
        serialization.load_torch(str(tmp_path / "cut.pth"))
    (tmp_path / "junk.pdparams").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(WeightsError, match=r"cannot read .*junk\.pdparams: not a valid paddle.save file"):
        read_checkpoint(str(tmp_path / "junk.pdparams"))
    np.save(str(tmp_path / "obj.npy"), np.zeros(1))  # not a pickle either
    with pytest.raises(WeightsError, match="cannot read"):
        serialization.load(str(tmp_path / "obj.npy"))


def test_object_arrays_and_odd_numpy_are_refused(tmp_path):
    for name, value, what in [("obj", np.array([1, "a"], dtype=object), "numpy dtype 'O8'"),
                              ("rec", np.zeros(2, dtype=[("a", "f4")]), "numpy dtype 'V4'"),
                              ("text", np.array(["abc"]), "numpy dtype 'U3'")]:
        path = tmp_path / f"{name}.pdparams"
        path.write_bytes(pickle.dumps({"w": value}, protocol=2))
        with pytest.raises(WeightsError) as info:
            serialization.load_paddle(str(path))
        assert what in str(info.value) and "\n" not in str(info.value), str(info.value)


# ---------------------------------------------------------------------------------------------
# paddle.save files


def _same(a, b, where="root"):
    """Bit-for-bit equality of two loaded objects (dtype, shape, values, container types)."""
    if isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == np.ascontiguousarray(b).tobytes(), where
    elif isinstance(b, dict):
        assert isinstance(a, dict) and list(a) == list(b), where
        for k in b:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), f"{where}: {a!r} vs {b!r}"


def test_trainer_checkpoints_and_paddle_state_dicts_round_trip(tmp_path):
    import paddle

    from chexcam.engine import train

    csv_path = make_csv_dataset(str(tmp_path / "d"))
    out = str(tmp_path / "run")
    train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 1})))
    for name in ("last.pdparams", "best.pdparams"):
        path = os.path.join(out, name)
        got = serialization.load_paddle(path)
        _same(got, paddle.load(path, return_numpy=True))
        ckpt = read_checkpoint(path)
        assert ckpt["epoch"] == 0 and ckpt["config"]["model"]["name"] == "densenet_tiny"
        assert {"model", "optimizer", "scheduler"} <= set(ckpt)
        assert all(isinstance(v, np.ndarray) for v in ckpt["model"].values())

    model = chexcam.create_model("densenet_tiny", num_classes=1)
    opt = paddle.optimizer.Adam(parameters=model.parameters())
    model(paddle.randn([2, 3, 20, 20])).mean().backward()
    opt.step()
    for protocol in (2, 4):
        paddle.save(model.state_dict(), str(tmp_path / f"sd{protocol}.pdparams"), protocol=protocol)
        paddle.save(opt.state_dict(), str(tmp_path / f"opt{protocol}.pdopt"), protocol=protocol)
        for name in (f"sd{protocol}.pdparams", f"opt{protocol}.pdopt"):
            _same(serialization.load_paddle(str(tmp_path / name)),
                  paddle.load(str(tmp_path / name), return_numpy=True), name)
    fresh = chexcam.create_model("densenet_tiny", num_classes=1)
    fresh.set_state_dict(read_checkpoint(str(tmp_path / "sd4.pdparams")))
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), model.state_dict()[k].numpy(), err_msg=k)


# ---------------------------------------------------------------------------------------------
# malicious files: refused by name, nothing runs, on every path that reads weights


class _Evil:
    """Unpickling this runs ``how`` on ``marker``; a safe loader must refuse before the call."""

    def __init__(self, how, marker):
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "posix.system":
            return os.system, (f"touch {self.marker}",)
        if self.how == "builtins.exec":
            return exec, (f"open({self.marker!r}, 'w').close()",)
        return subprocess.Popen, (["touch", self.marker],)


def write_evil(path, fmt, how, marker):
    """A weights file whose pickle calls ``how``: legacy .pth, zip .pth or .pdparams."""
    payload = {"state_dict": OrderedDict(w=np.zeros(2, np.float32)), "extra": _Evil(how, marker)}
    if fmt == "pdparams":
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=4)
    elif fmt == "legacy":
        with open(path, "wb") as fh:
            for head in (serialization.MAGIC_NUMBER, serialization.PROTOCOL_VERSION, {"little_endian": True},
                         payload, []):
                pickle.dump(head, fh, protocol=2)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
            zf.writestr("archive/byteorder", "little")
    return path


EVIL = [(fmt, how) for fmt in ("legacy", "zip", "pdparams")
        for how in ("posix.system", "builtins.exec", "subprocess.Popen")]


@pytest.mark.parametrize("fmt,how", EVIL)
def test_malicious_pickles_are_refused_by_name(tmp_path, fmt, how):
    marker = str(tmp_path / "pwned")
    path = write_evil(str(tmp_path / f"evil.{'pdparams' if fmt == 'pdparams' else 'pth'}"), fmt, how, marker)
    with pytest.raises(WeightsError) as info:
        serialization.load(path)
    msg = str(info.value)
    assert msg == f"refused to load {path}: it references {how}, which a weights file never needs"
    assert not os.path.exists(marker)
    # the control: plain pickle does run it, so the file is truly malicious
    if fmt == "zip":
        with zipfile.ZipFile(path) as zf:
            payload = pickle.loads(zf.read("archive/data.pkl"))
    else:
        with open(path, "rb") as fh:
            payload = [pickle.load(fh) for _ in range(4 if fmt == "legacy" else 1)][-1]
    if how == "subprocess.Popen":
        payload["extra"].wait()
    assert os.path.exists(marker)


@pytest.mark.parametrize("fmt", ["legacy", "zip", "pdparams"])
def test_model_weights_refuse_malicious_files_and_pytorch_ones(tmp_path, fmt):
    marker = str(tmp_path / "pwned")
    path = write_evil(str(tmp_path / "evil.pdparams"), fmt, "builtins.exec", marker)  # the name does not matter
    cfg = chexcam.load_config(MALARIA, ["model.name=densenet_tiny", f"model.weights={path}"])
    with pytest.raises(WeightsError, match=r"it references builtins\.exec"):
        chexcam.build_model(cfg)
    assert not os.path.exists(marker)
    obj, _ = chexnet_like(v2=True)  # a harmless PyTorch file: read safely, then sent to the converter
    write_zip(str(tmp_path / "model.pth"), obj)
    cfg = chexcam.load_config(MALARIA, ["model.name=densenet_tiny", f"model.weights={tmp_path / 'model.pth'}"])
    with pytest.raises(WeightsError, match=r"is a PyTorch checkpoint.*tools/convert_weights\.py"):
        chexcam.build_model(cfg)


def _one_error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "ccache" not in ln and "warnings.warn" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_convert_tool_refuses_malicious_pth(tmp_path, fmt):
    marker = str(tmp_path / "pwned")
    path = write_evil(str(tmp_path / "model.pth.tar"), fmt, "posix.system", marker)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_weights.py"), "-c",
                           os.path.join(ROOT, "configs", "chestxray14.yaml"), "-q", "--src", path,
                           "--out", str(tmp_path / "out.pdparams")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "refused to load" in _one_error_line(proc) and "posix.system" in proc.stderr
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out.pdparams")


def test_auto_resume_refuses_a_planted_last_checkpoint(tmp_path):
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    out = tmp_path / "run"
    out.mkdir()
    marker = str(tmp_path / "pwned")
    write_evil(str(out / "last.pdparams"), "pdparams", "subprocess.Popen", marker)
    args = [sys.executable, os.path.join(ROOT, "tools", "train.py"), "-c", MALARIA, "-q"]
    for o in tiny_overrides(csv_path, str(out), **{"train.epochs": 1}):
        args += ["-o", o]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert line == (f"error: refused to load {out / 'last.pdparams'}: it references subprocess.Popen, "
                    "which a weights file never needs")
    assert not os.path.exists(marker)


# ---------------------------------------------------------------------------------------------
# parity with torch.load on files torch wrote


def _torch():
    return pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[parity]')")


def _as_numpy(torch, obj):
    """torch.load's result with tensors as numpy (bfloat16 widened to float32, as the reader does)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().resolve_conj().resolve_neg()
        return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _as_numpy(torch, v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_as_numpy(torch, v) for v in obj)
    return obj


@pytest.mark.parity
@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_parity_with_torch_load(tmp_path, zip_format):
    torch = _torch()
    torch.manual_seed(0)
    base = torch.randn(6, 5)
    wide = torch.randn(3, 1)
    p = "module.densenet121."
    state = OrderedDict([
        (p + "features.conv0.weight", torch.randn(8, 3, 7, 7)),
        (p + "features.norm0.running_mean", base[2:, 1:3]),  # shares base's storage at an offset
        (p + "features.norm0.running_var", base),
        (p + "features.norm0.weight", base.t()),  # non-contiguous
        (p + "features.norm0.bias", wide.expand(3, 4)),  # stride 0
        (p + "classifier.0.weight", torch.randn(14, 8).half()),
        (p + "classifier.0.bias", torch.nn.Parameter(torch.randn(14))),
        ("int64", torch.arange(-5, 5)), ("bool", torch.tensor([True, False, True])),
        ("bf16", torch.randn(4).bfloat16()), ("scalar", torch.tensor(2.5, dtype=torch.float64)),
        ("empty", torch.zeros(0, 3)), ("conj", torch.randn(3, dtype=torch.complex64).conj()),
    ])
    if zip_format:
        state["uint16"] = torch.arange(5).to(torch.uint16)  # _rebuild_tensor_v3 on an untyped storage
    param = torch.nn.Parameter(torch.randn(2))
    opt = torch.optim.Adam([param], lr=1e-3)
    param.sum().backward()
    opt.step()
    obj = {"epoch": 3, "arch": "densenet121", "state_dict": state, "best_loss": 0.25,
           "optimizer": opt.state_dict()}
    path = str(tmp_path / "model.pth.tar")
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    assert serialization.sniff(path) == ("torch_zip" if zip_format else "torch_legacy")
    _same(serialization.load_torch(path), _as_numpy(torch, torch.load(path, weights_only=True)))


@pytest.mark.parity
def test_parity_big_endian_zip(tmp_path):
    """A zip whose byteorder record says big: torch.load and the reader both swap to native."""
    torch = _torch()
    obj = {"f": torch.randn(3, 2), "i": torch.arange(4), "h": torch.randn(5).half()}
    obj["t"] = obj["f"].t()
    torch.save(obj, str(tmp_path / "le.pth"))
    codes = {"0": "f4", "1": "i8", "2": "f2"}  # storage keys in pickling order
    with zipfile.ZipFile(tmp_path / "le.pth") as zin, zipfile.ZipFile(tmp_path / "be.pth", "w") as zout:
        for info in zin.infolist():
            data, leaf = zin.read(info), info.filename.rsplit("/", 1)[-1]
            if leaf == "byteorder":
                data = b"big"
            elif "/data/" in info.filename and leaf in codes:
                data = np.frombuffer(data, "<" + codes[leaf]).astype(">" + codes[leaf]).tobytes()
            zout.writestr(info, data)
    want = _as_numpy(torch, torch.load(str(tmp_path / "be.pth"), weights_only=True))
    _same(want, _as_numpy(torch, obj))  # torch agrees the file is the same data, big-endian
    _same(serialization.load_torch(str(tmp_path / "be.pth")), want)


@pytest.mark.parity
def test_full_densenet121_release_converts_without_torch_load(tmp_path):
    """A whole torchvision DenseNet121 in the release's legacy layout: every converted tensor is exact."""
    torch = _torch()
    torchvision = pytest.importorskip("torchvision", reason="needs torchvision (pip install -e '.[parity]')")
    import re

    from chexcam.convert import convert_file

    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None, num_classes=14)
    state = OrderedDict()
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)
            state["module.densenet121." + key.replace("classifier.", "classifier.0.")] = value
    src = str(tmp_path / "model.pth.tar")
    torch.save({"epoch": 1, "arch": "densenet121", "state_dict": state, "best_loss": torch.tensor(0.2)}, src,
               _use_new_zipfile_serialization=False)
    report = convert_file(src, str(tmp_path / "chexnet.pdparams"))
    assert report["source_format"] == "chexnet_pth" and report["tensors"] == len(state)
    converted = read_checkpoint(str(tmp_path / "chexnet.pdparams"))["model"]
    for rec in report["mapping"]:
        want = state[rec["source"]].numpy()
        want = want.T if rec["transform"] == "transpose" else want
        got = converted[rec["target"]]
        assert got.dtype == np.float32 and np.array_equal(got, want), rec["source"]
    with open(tmp_path / "chexnet.convert.json") as fh:
        assert json.load(fh)["source_sha256"] == report["source_sha256"]


def test_allow_list_holds_no_callable_that_reaches_the_system():
    names = serialization.allowed_globals()
    assert "torch._utils._rebuild_tensor" in names and "numpy.dtype" in names and "collections.OrderedDict" in names
    modules = {n.rsplit(".", 1)[0] for n in names}
    assert modules <= {"builtins", "collections", "_codecs", "numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                       "numpy.core.numeric", "numpy._core.numeric", "torch", "torch.cuda", "torch.storage",
                       "torch._utils"}
    assert {n for n in names if n.startswith("builtins.")} == {
        "builtins.tuple", "builtins.list", "builtins.dict", "builtins.set", "builtins.frozenset", "builtins.complex"}
