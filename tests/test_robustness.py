"""Hostile files, bad input and faults (issue 15): one line ``error: ...``, no traceback, no hang, nothing lost.

Each case asserts the exit status, exactly one line on stderr, no ``Traceback``, nothing written where it should
not be and earlier outputs intact. Tools run in-process through :func:`chexcam.cli.run_tool` (the same code
path as the command line, minus a second paddle import); SIGTERM needs a real process.
"""

import errno
import importlib.util
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import paddle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chexcam
from chexcam.cli import run_tool
from chexcam.config import load_config, parse_override, valid_keys
from chexcam.data import ImageDataset, build_split, build_splits
from chexcam.data.csv_dataset import label_value
from chexcam.data.datasets import iterate, make_loader
from chexcam.data.io import read_image
from chexcam.data.samples import Sample, check_unique
from chexcam.engine import train
from chexcam.errors import BadImageError, ConfigError, DataError
from chexcam.utils import atomic_path, remove_stale_temps
from chexcam.weights import read_checkpoint

from .conftest import ROOT
from .test_data import CHEST, MALARIA, make_csv_dataset, tiny_overrides

TOOLS = os.path.join(ROOT, "tools")


# ---------------------------------------------------------------------------------------------
# helpers


def png_header_bomb(path, width, height):
    """A valid PNG header claiming ``width x height`` with a tiny IDAT of compressed zeros (never decoded)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    idat = zlib.compress(b"\0" * (width + 1) * 2, 9)  # two rows of a gray image; the rest is missing
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                 + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return str(path)


def jpeg_header_bomb(path, width, height, metadata=0):
    """SOI, ``metadata`` bytes of APP1 segments, a baseline SOF0 frame header claiming ``width x height``, EOI."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    app = b""
    while len(app) < metadata:
        app += b"\xff\xe1" + struct.pack(">H", 40002) + b"\0" * 40000
    with open(path, "wb") as fh:
        fh.write(b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0" + app
                 + sof + b"\xff\xd9")
    return str(path)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", os.path.join(TOOLS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_cli(name, config, overrides, capsys, extra=()):
    """Run ``tools/<name>.py -c config -q -o ...`` in-process; returns ``(exit status, stderr lines)``."""
    mod = _load_tool(name)
    argv = ["-c", config, "-q"] + [a for o in overrides for a in ("-o", o)] + list(extra)
    capsys.readouterr()
    code = run_tool(mod.main, mod.__doc__, argv)
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.strip()]


def assert_one_error_line(lines, *needles):
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


def snapshot(folder):
    """{name: bytes} of every file under ``folder`` (earlier outputs must stay as they were)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def in_thread(fn, timeout=60):
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) when it does not end in time."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"hung for {timeout} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def with_alarm(fn, timeout=60):
    """Run ``fn`` in the main thread (paddle's worker processes need it); SIGALRM fails it after ``timeout`` s."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"hung for {timeout} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset and a 1-epoch run of it (copied by the tests that need a checkpoint)."""
    base = tmp_path_factory.mktemp("robust")
    csv_path = make_csv_dataset(str(base / "d"))
    out = str(base / "run")
    train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 1})))
    return csv_path, out


# ---------------------------------------------------------------------------------------------
# 2. bounded cost per image: the pixel limit is read from the header


def test_huge_png_refused_from_header_fast_and_with_little_memory(tmp_path):
    path = png_header_bomb(tmp_path / "huge.png", 20000, 20000)
    assert os.path.getsize(path) < 100_000
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(BadImageError) as info:
        read_image(path)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    msg = str(info.value)
    assert seconds < 1.0 and peak < 5_000_000, (seconds, peak)
    assert "\n" not in msg and "huge.png" in msg and "20000x20000" in msg and "data.max_pixels" in msg
    # a smaller limit refuses an ordinary image; a raised one lets it through
    small = str(tmp_path / "small.png")
    cv2.imwrite(small, np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(BadImageError, match="40x30 = 1,200 pixels"):
        read_image(small, max_pixels=1000)
    assert read_image(small, max_pixels=1200).shape == (30, 40, 3)


def test_pixel_limit_for_jpeg_other_formats_and_dicom(tmp_path):
    with pytest.raises(BadImageError, match="30000x20000"):
        read_image(jpeg_header_bomb(tmp_path / "huge.jpg", 30000, 20000))
    with pytest.raises(BadImageError, match="30000x20000"):  # frame header after 120 kB of metadata
        read_image(jpeg_header_bomb(tmp_path / "meta.jpg", 30000, 20000, metadata=100_000))
    for ext in (".bmp", ".tif", ".webp"):  # sized by Pillow's lazy header read
        p = str(tmp_path / f"x{ext}")
        cv2.imwrite(p, np.zeros((20, 50, 3), np.uint8))
        with pytest.raises(BadImageError, match="50x20"):
            read_image(p, max_pixels=999)
        assert read_image(p, max_pixels=1000).shape == (20, 50, 3)
    from .test_io import _write_dicom

    dcm = _write_dicom(tmp_path / "a.dcm", np.zeros((8, 6), np.uint16))
    with pytest.raises(BadImageError, match="6x8 = 48 pixels"):
        read_image(dcm, max_pixels=47)
    assert read_image(dcm, max_pixels=48).shape == (8, 6, 3)


def test_opencv_error_is_a_bad_image(tmp_path, monkeypatch):
    import chexcam.data.io as io

    path = str(tmp_path / "a.png")
    cv2.imwrite(path, np.zeros((4, 4, 3), np.uint8))

    def boom(*a, **k):
        raise cv2.error("OpenCV(4.x) loadsave.cpp:77: error: (-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS")

    monkeypatch.setattr(io.cv2, "imdecode", boom)
    with pytest.raises(BadImageError, match=r"a\.png.*Assertion failed") as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_huge_image_in_training_follows_on_bad_image(tmp_path, capsys):
    folder = str(tmp_path / "d")
    os.makedirs(os.path.join(folder, "img"))
    png_header_bomb(os.path.join(folder, "img", "huge.png"), 20000, 20000)
    csv_path = make_csv_dataset(folder, extra_rows=["img/huge.png,1,px,train"])
    t0 = time.perf_counter()
    code, lines = run_cli("train", MALARIA, tiny_overrides(csv_path, str(tmp_path / "err"), **{"train.epochs": 1}),
                          capsys)
    assert code == 2 and time.perf_counter() - t0 < 60
    assert_one_error_line(lines, "huge.png", "20000x20000", "data.max_pixels")
    assert not os.path.exists(os.path.join(tmp_path, "err", "last.pdparams"))
    res = train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, str(tmp_path / "skip"), **{
        "train.epochs": 1, "data.on_bad_image": "skip"})))
    assert list(res["skipped_files"]) == [os.path.join(folder, "img", "huge.png")]


# ---------------------------------------------------------------------------------------------
# 3. no hangs: a failure in a loader thread or worker reaches the main thread


def _dataset(tmp_path, **extra):
    csv_path = make_csv_dataset(str(tmp_path / "d"))
    cfg = chexcam.load_config(MALARIA, tiny_overrides(csv_path, str(tmp_path / "o"), **extra))
    return cfg, ImageDataset(build_split(cfg, "train"), cfg, train=True)


def test_decoder_exception_in_the_loader_thread_follows_on_bad_image(tmp_path, monkeypatch):
    import chexcam.data.datasets as datasets

    cfg, ds = _dataset(tmp_path)
    victim = ds.samples[3].path
    real = datasets.read_image

    def decoder(path, max_pixels):
        if path == victim:
            raise cv2.error("OpenCV(4.x) error: (-215:Assertion failed) in function 'validateInputImageSize'")
        return real(path, max_pixels)

    monkeypatch.setattr(datasets, "read_image", decoder)
    loader, sampler = make_loader(ds, 4, True, 0)
    with pytest.raises(BadImageError) as info:
        in_thread(lambda: list(iterate(loader, sampler, ds, 0, "error")))
    msg = str(info.value)
    assert "\n" not in msg and os.path.basename(victim) in msg and "Assertion failed" in msg
    skipped = {}
    n = in_thread(lambda: sum(len(i) for _, _, i in iterate(loader, sampler, ds, 0, "skip", skipped)))
    assert n == len(ds) - 1 and list(skipped) == [victim]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # paddle's reader thread
@pytest.mark.parametrize("workers", [0, 1])
def test_loader_failure_outside_an_item_ends_the_run_with_one_line(tmp_path, monkeypatch, workers):
    cfg, ds = _dataset(tmp_path)

    def broken(self, i):  # not one image's failure: the item itself cannot be built
        raise RuntimeError("collate exploded\nsecond line")

    monkeypatch.setattr(ImageDataset, "__getitem__", broken)
    loader, sampler = make_loader(ds, 4, True, 0, num_workers=workers)
    guard = with_alarm if workers else in_thread
    with pytest.raises(DataError, match="the data loader failed") as info:
        guard(lambda: list(iterate(loader, sampler, ds, 0, "error")))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# 4. nothing non-finite is kept


@pytest.mark.parametrize("override, key", [
    ("data.mean=[.nan, 0.4, 0.4]", "data.mean"), ("data.std=[0.2, .inf, 0.2]", "data.std"),
    ("train.lr=.nan", "train.lr"), ("eval.ci=.nan", "eval.ci"), ("infer.alpha=-.inf", "infer.alpha"),
    ("data.std=[0.2, 0.0, 0.2]", "data.std"), ("seed=-1", "seed"), ("seed=99999999999", "seed"),
    ("data.max_pixels=0", "data.max_pixels"), ("train.weight_decay=-1", "train.weight_decay"),
    ("model.dropout=1.5", "model.dropout"), ("data.labels=[Parasitized, Parasitized]", "data.labels"),
    ("train.lr=1" + "0" * 400, "train.lr"), ("train.epochs=2024-13-01", "train.epochs"),
])
def test_config_numbers_are_validated(override, key):
    extra = ["model.num_classes=2"] if "labels" in override else []
    with pytest.raises(ConfigError) as info:
        load_config(MALARIA, [override] + extra)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_nan_weights_are_never_saved_and_the_last_good_checkpoint_stays(tmp_path, trained, monkeypatch):
    csv_path, first = trained
    out = str(tmp_path / "run")
    shutil.copytree(first, out)
    before = snapshot(out)
    real = train._train_one_epoch

    def poisoned(cfg, parts, *args, **kwargs):
        result = real(cfg, parts, *args, **kwargs)
        w = parts.model.parameters()[0]
        w.set_value(paddle.full_like(w, float("nan")))
        return result

    monkeypatch.setattr(train, "_train_one_epoch", poisoned)
    with pytest.raises(train.TrainingDiverged) as info:
        train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 2})))
    msg = str(info.value)
    assert "weights became non-finite" in msg and "epoch 2" in msg and "last.pdparams" in msg and "\n" not in msg
    after = snapshot(out)
    for name in ("last.pdparams", "best.pdparams", "history.jsonl"):
        assert after[name] == before[name], name
    assert not [f for f in after if ".tmp" in f]


def test_resume_refuses_non_finite_weights(tmp_path, trained):
    csv_path, first = trained
    out = str(tmp_path / "run")
    shutil.copytree(first, out)
    ckpt = read_checkpoint(os.path.join(out, "last.pdparams"))
    name = next(iter(ckpt["model"]))
    ckpt["model"][name] = np.full_like(ckpt["model"][name], np.nan)
    paddle.save(ckpt, os.path.join(out, "last.pdparams"))
    with pytest.raises(train.TrainingDiverged, match="not finite"):
        train.run(chexcam.load_config(MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 2})))


def test_pos_weight_ignores_nan_labels():
    s = [Sample("a", np.array([1, np.nan], np.float32)), Sample("b", np.array([0, 1], np.float32)),
         Sample("c", np.array([np.nan, 0], np.float32)), Sample("d", np.array([0, 0], np.float32))]
    np.testing.assert_allclose(train._pos_weight(s), [2.0, 2.0])


# ---------------------------------------------------------------------------------------------
# 5. explicit data policy


def _csv_cfg(tmp_path, text, **extra):
    p = tmp_path / "list.csv"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return chexcam.load_config(MALARIA, tiny_overrides(str(p), str(tmp_path / "o"), **extra))


@pytest.mark.parametrize("text, pattern", [
    ("path,Parasitized\na.png,1\nb.png,\nc.png,0\n", r"list\.csv row 3: empty 'Parasitized' cell.*data\.blank"),
    ("path,Parasitized\na.png,1\nb.png,0\na.png,1\n", r"list\.csv row 4: 'a\.png' repeats row 2"),
    ("path,Parasitized\na.png,1\nb.png,0\n./a.png,0\n", r"list\.csv row 4: '\./a\.png' conflicts with row 2"),
    ("path,Parasitized,split\na.png,1,train\nb.png,0,\n", r"list\.csv row 3: empty 'split' cell"),
    ("path,Parasitized\na.png,0\nb.png,0\n", r"list\.csv has no positive image for 'Parasitized'.*both classes"),
    ("path,Parasitized,Parasitized\na.png,1,1\n", r"appear more than once"),
    ("path,Parasitized\na.png,1,extra\n", r"row 2: more cells"),
    (b"path,Parasitized\n\xff\xfe.png,1\n", r"cannot read data\.csv .*list\.csv: not UTF-8"),
])
def test_csv_data_policy_errors_name_file_and_row(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        build_splits(_csv_cfg(tmp_path, text))
    assert "\n" not in str(info.value)


def test_csv_empty_cells_may_be_ignored_explicitly(tmp_path):
    text = "path,Parasitized\n" + "".join(f"{i}.png,{['1', '0', ''][i % 3]}\n" for i in range(12))
    s = build_splits(_csv_cfg(tmp_path, text, **{"data.blank": "ignore"})).splits
    targets = np.concatenate([x.target for v in s.values() for x in v])
    assert np.isnan(targets).sum() == 4 and np.nansum(targets) == 4


def test_image_listed_in_two_splits_is_refused():
    a = Sample("x/a.png", np.zeros(1, np.float32))
    with pytest.raises(DataError, match="in both train and test"):
        check_unique({"train": [a], "val": [], "test": [Sample("x/./a.png", a.target)]}, "dataset 'csv'")


def _nih(tmp_path, finding):
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position"]
    rows += [f"{p:08d}_000.png,{finding if p == 3 else 'Effusion'},0,{p:08d},50,M,PA" for p in range(1, 6)]
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "train_val_list.txt").write_text("".join(f"{p:08d}_000.png\n" for p in range(1, 5)))
    (tmp_path / "test_list.txt").write_text("00000005_000.png\n")
    return chexcam.load_config(CHEST, [f"data.root={tmp_path}"])


def test_misspelled_nih_finding_is_an_error_naming_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv line 4: unknown finding 'Pnuemonia'.*'Pneumonia'"):
        build_splits(_nih(tmp_path, "Effusion|Pnuemonia"))


def test_malaria_without_one_class_is_refused(tmp_path):
    root = tmp_path / "cells"
    (root / "Uninfected").mkdir(parents=True)
    (root / "Parasitized").mkdir()
    cv2.imwrite(str(root / "Parasitized" / "C1P1_cell_1.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"Uninfected has no images.*both classes"):
        build_splits(chexcam.load_config(MALARIA, [f"data.root={root}"]))


# ---------------------------------------------------------------------------------------------
# 6. every tool fails cleanly


def test_output_dir_that_is_a_file(tmp_path, trained, capsys):
    csv_path, _ = trained
    blocker = tmp_path / "out"
    blocker.write_text("keep me")
    code, lines = run_cli("train", MALARIA, tiny_overrides(csv_path, str(blocker)), capsys)
    assert code == 1
    assert_one_error_line(lines, str(blocker), "a file of that name is in the way")
    assert blocker.read_text() == "keep me"


def test_cache_dir_that_is_a_file(tmp_path, trained, capsys):
    csv_path, _ = trained
    blocker = tmp_path / "cache"
    blocker.write_text("keep me")
    code, lines = run_cli("prepare_data", MALARIA, tiny_overrides(csv_path, str(tmp_path / "o"), **{
        "data.cache_dir": str(blocker)}), capsys)
    assert code == 1
    assert_one_error_line(lines, str(blocker), "part of the path is a file")
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("exc, needles", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/x.png"), ["permission denied: /data/x.png"]),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/sub"), ["/f/sub", "part of the path is a file"]),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), ["invalid start byte", "not UTF-8"]),
    (MemoryError(), ["out of memory"]),
])
def test_os_errors_and_undecodable_text_are_one_line(tmp_path, capsys, exc, needles):
    def main(cfg, args):
        raise exc

    capsys.readouterr()
    code = run_tool(main, "t", ["-c", MALARIA])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1
    assert_one_error_line(lines, *needles)


def test_disk_full_during_an_atomic_write_names_the_file_and_keeps_the_old_one(tmp_path, capsys):
    target = tmp_path / "last.pdparams"
    target.write_bytes(b"good")

    def main(cfg, args):
        with atomic_path(str(target)) as tmp, open(tmp, "wb") as fh:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    capsys.readouterr()
    code = run_tool(main, "t", ["-c", MALARIA])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1
    assert_one_error_line(lines, "no space left", str(target))
    assert target.read_bytes() == b"good" and os.listdir(tmp_path) == ["last.pdparams"]


def test_config_that_is_not_utf8_and_hostile_newlines(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"seed: 1\nname: \xff\xfe\n")
    capsys.readouterr()
    code = run_tool(lambda c, a: 0, "t", ["-c", str(cfg)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1  # text that is not UTF-8: the environment (README "Exit status")
    assert_one_error_line(lines, "c.yaml", "not UTF-8")

    def main(c, a):
        raise BadImageError("cannot decode image: evil\nname.png")

    code = run_tool(main, "t", ["-c", MALARIA])
    assert_one_error_line([ln for ln in capsys.readouterr().err.splitlines() if ln.strip()], "evil\\nname.png")


def test_resume_with_another_model_names_the_key(tmp_path, trained, capsys):
    csv_path, first = trained
    out = str(tmp_path / "run")
    shutil.copytree(first, out)
    before = snapshot(out)
    code, lines = run_cli("train", MALARIA, tiny_overrides(csv_path, out, **{"model.name": "densenet_small"}), capsys)
    assert code == 2
    assert_one_error_line(lines, "cannot resume", "model.name='densenet_tiny'", "'densenet_small'",
                          "train.auto_resume=false")
    after = snapshot(out)
    assert {k: after[k] for k in before if k != "train.log"} == {k: before[k] for k in before if k != "train.log"}


@pytest.mark.parametrize("argv, needle", [(["--limit", "-5"], "--limit: must be >= 1, got -5"),
                                          (["--limit", "abc"], "expected a whole number"),
                                          (["--tile", "0"], "--tile: must be >= 1")])
def test_render_mosaic_rejects_bad_counts_in_one_line(argv, needle, capsys, monkeypatch):
    import runpy

    monkeypatch.setattr(sys, "argv", ["render_mosaic.py", "-c", MALARIA] + argv)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        runpy.run_path(os.path.join(TOOLS, "render_mosaic.py"), run_name="__main__")
    assert info.value.code == 2
    assert_one_error_line([ln for ln in capsys.readouterr().err.splitlines() if ln.strip()], needle)
    from chexcam.engine.sheets import render_sheet

    with pytest.raises(chexcam.ChexcamError, match="limit must be"):
        render_sheet(load_config(MALARIA), limit=-5)


def test_stale_temporary_files_are_removed_only_when_their_writer_is_gone(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"last.pdparams.tmp{dead.pid}"
    live = tmp_path / f"history.jsonl.tmp{os.getppid()}"
    mine = tmp_path / f"config.yaml.tmp{os.getpid()}"
    sub = tmp_path / "ab"
    sub.mkdir()
    deep = sub / f"x.png.tmp{dead.pid}"
    for p in (stale, live, mine, deep, tmp_path / "notes.tmp"):
        p.write_text("x")
    assert remove_stale_temps(str(tmp_path)) == [str(stale)]
    assert live.exists() and mine.exists() and deep.exists()
    assert remove_stale_temps(str(tmp_path), recursive=True) == [str(deep)]
    assert remove_stale_temps(str(tmp_path / "missing")) == []


def test_sigterm_is_handled_like_ctrl_c(tmp_path, trained):
    """A real process: SIGTERM mid-training exits 143 with one line, no C++ stack dump, checkpoint readable."""
    csv_path, _ = trained
    out = str(tmp_path / "run")
    args = [sys.executable, os.path.join(TOOLS, "train.py"), "-c", MALARIA, "-q"]
    for o in tiny_overrides(csv_path, out, **{"train.epochs": 1000}):
        args += ["-o", o]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = os.path.join(out, "last.pdparams")
    deadline = time.time() + 120
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip() and "ccache" not in ln and "warnings.warn" not in ln]
    assert proc.returncode == 143, err[-3000:]
    assert_one_error_line(lines, "SIGTERM")
    assert "Traceback" not in err and "C++" not in err and "FatalError" not in err
    assert read_checkpoint(last)["epoch"] >= 0
    assert not [f for f in os.listdir(out) if ".tmp" in f]


# ---------------------------------------------------------------------------------------------
# 7. property tests: nothing but the package's own one-line errors


_KEYS = st.one_of(st.sampled_from(valid_keys()), st.text(min_size=0, max_size=12))
_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from([".nan", ".inf", "-.inf", "1e999", "1" + "0" * 400, "-1", "0", "[1, 2]", "{a: 1}", "null",
                     "2024-13-01", "!!python/object:os.system", "[", "'", "&a [*a]", "true", "3.5", "x: [y"]),
    st.integers().map(str), st.floats().map(repr),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_KEYS, _VALUES), max_size=3), st.booleans())
def test_random_overrides_raise_only_config_errors(pairs, sep):
    overrides = [f"{k}{'=' if sep else ''}{v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    for key, value in (("seed", cfg.seed), ("train.lr", cfg.train.lr)):
        assert math.isfinite(value), key
    assert all(math.isfinite(v) for v in cfg.data.mean + cfg.data.std)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_parse_override_raises_only_config_errors(text):
    try:
        parts, _, _ = parse_override(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert parts and all(parts)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=8)), st.sampled_from(["error", "ignore"]))
def test_label_cells_parse_to_0_1_nan_or_one_line_error(text, blank):
    try:
        v = label_value(text, "list.csv", 7, "Parasitized", blank)
    except DataError as exc:
        assert "list.csv row 7" in str(exc) and "\n" not in str(exc)
        return
    assert v in (0.0, 1.0) or (blank == "ignore" and math.isnan(v) and not (text or "").strip())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=5), min_size=1, max_size=3), st.sampled_from(["zeros", "ignore"]))
def test_chexpert_label_cells_parse_or_one_line_error(cells, blank):
    from chexcam.data.chexpert import LabelReader

    cfg = load_config(None, [f"data.blank={blank}", "data.uncertain=ignore"])
    labels = ["A", "B", "C"][: len(cells)]
    reader = LabelReader(labels, cfg)
    try:
        y = reader(dict(zip(labels, cells)), "train.csv", 3)
    except DataError as exc:
        assert "train.csv line 3" in str(exc) and "\n" not in str(exc)
        return
    assert all(v in (0.0, 1.0) or math.isnan(v) for v in y)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_csv_files_give_data_or_one_line_errors(tmp_path, data):
    cfg = _csv_cfg(tmp_path, b"path,Parasitized,split\n" + data)
    from chexcam.data.csv_dataset import csv_dataset

    try:
        res = csv_dataset(cfg)
    except DataError as exc:
        assert "\n" not in str(exc), str(exc)
        return
    assert sum(len(v) for v in res.splits.values()) >= 2



# ---------------------------------------------------------------------------------------------
# second round: memory computed from what will be allocated, special files, silent wrong results, exit statuses.
# The tools run as a user runs them, in a subprocess under RLIMIT_AS (3 GB) and a timeout.

LIMIT_AS = 3 << 30
#: the chest config at a size that runs in seconds
CHEST_TINY = ["model.name=densenet_tiny", "model.output_stride=8", "model.allow_random=true", "device=cpu",
              "data.resize=64", "data.crop=56", "infer.tile=64", "infer.engine=dynamic"]


def run_limited(tool, config, overrides, timeout=60, extra=(), cwd=None):
    """``python tools/<tool>.py -c config -q -o ...`` under RLIMIT_AS=3 GB; ``(status, stderr lines, seconds)``;
    fails when it runs past ``timeout`` (a hang)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))

    cmd = [sys.executable, os.path.join(TOOLS, f"{tool}.py"), "-c", config, "-q"]
    cmd += [a for o in overrides for a in ("-o", o)] + list(extra)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=limit, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{tool} ran past {timeout} s: {cmd}")
    lines = [ln for ln in proc.stderr.replace("\r", "\n").splitlines()  # not the warnings and progress bars
             if ln.strip() and " WARNING " not in ln and not re.match(r"^[\w ]+:\s+\d+%\|", ln)]
    return proc.returncode, lines, time.perf_counter() - t0


def png_header(path, width, height, depth=8, colour=0, size=None):
    """A PNG whose IHDR declares ``width x height`` (``depth`` bits, colour type ``colour``: 6 is RGBA) with a
    tiny IDAT; ``size``: make the file that many bytes long, sparse (a hole before IEND)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    body = chunk(b"IDAT", zlib.compress(b"\0" * 64, 9))
    with open(path, "wb") as fh:
        fh.write(head + body)
        if size is not None:
            fh.seek(size - 12)
        fh.write(chunk(b"IEND", b""))
    return str(path)


def test_decoded_size_and_file_size_are_checked_from_the_header(tmp_path):
    # a 16-bit RGBA scan under data.max_pixels whose decoded array is 8 bytes a pixel
    rgba16 = png_header(tmp_path / "rgba16.png", 9400, 9400, depth=16, colour=6)
    with pytest.raises(BadImageError, match=r"rgba16\.png decodes to 9400x9400 pixels of 8 bytes"):
        read_image(rgba16)
    # a sparse 4 GiB file behind a small valid header is not read into memory
    sparse = png_header(tmp_path / "sparse.png", 100, 100, size=4 << 30)
    t0 = time.perf_counter()
    with pytest.raises(BadImageError, match=r"sparse\.png is 4,096 MB on disk for 100x100 pixels"):
        read_image(sparse)
    assert time.perf_counter() - t0 < 1
    # one extraneous byte before the frame header does not hide the JPEG's declared size
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 30000, 30000, 1) + b"\x01\x11\x00"
    (tmp_path / "skew.jpg").write_bytes(b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
                                        + b"\x00" + sof + b"\xff\xd9")
    with pytest.raises(BadImageError, match="30000x30000"):
        read_image(str(tmp_path / "skew.jpg"))
    # a 16-bit image is stretched to 8 bits without a float64 copy, to the same numbers
    from chexcam.data.io import to_uint8

    deep = np.random.default_rng(0).integers(100, 4000, (40, 30, 4)).astype(np.uint16)
    f = deep.astype(np.float64)
    ref = np.clip(np.rint((f - f.min()) * (255.0 / (f.max() - f.min()))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(deep), ref)


def test_resize_target_is_bounded_before_allocating(tmp_path):
    from chexcam.data.transforms import resize_for

    for w in (20000, 100000):  # the shorter side to 256: 5,120,000 x 256 and 25,600,000 x 256 pixels
        with pytest.raises(BadImageError, match=f"cannot resize an image of {w}x1"):
            resize_for(np.zeros((1, w, 3), np.uint8), 256, "shorter")
    with pytest.raises(ConfigError, match="data.resize"):
        load_config(CHEST, ["data.resize=100000"])
    with pytest.raises(ConfigError, match="eval.bootstrap"):
        load_config(CHEST, ["eval.bootstrap=1000000000"])
    with pytest.raises(ConfigError, match="infer.tile"):
        load_config(CHEST, ["infer.tile=100000"])


def _hostile_folder(root):
    """Images a careless user or an attacker leaves in a folder, beside one good X-ray."""
    d = os.path.join(root, "in")
    os.makedirs(os.path.join(d, "sub"))
    cv2.imwrite(os.path.join(d, "good.png"), np.random.default_rng(0).integers(0, 255, (80, 70), np.uint8))
    os.mkfifo(os.path.join(d, "fifo.png"))
    os.symlink("/dev/zero", os.path.join(d, "zero.png"))
    for i, target in enumerate(("..", ".", "../sub")):  # links that loop, at two levels
        os.symlink(target, os.path.join(d, "sub", f"loop{i}"))
    os.symlink("..", os.path.join(d, "loop"))
    png_header(os.path.join(d, "rgba16.png"), 9400, 9400, depth=16, colour=6)
    cv2.imwrite(os.path.join(d, "strip.png"), np.full((1, 100000), 128, np.uint8))  # resized: 6,400,000 x 64
    return d


def test_hostile_folder_through_a_recursive_glob_within_memory_and_time(tmp_path):
    d = _hostile_folder(str(tmp_path))
    out = str(tmp_path / "out")
    code, lines, seconds = run_limited("infer_cam", CHEST, CHEST_TINY + [
        f"infer.input={d}/**/*.png", f"output_dir={out}", "data.on_bad_image=skip"])
    assert code == 0 and seconds < 60, (code, lines)
    summary = __import__("json").load(open(os.path.join(out, "cam", "summary.json")))
    bad = summary["bad_files"]
    assert summary["images"] == 1 and len(bad) == 2, summary  # a FIFO or a device is not an image file at all
    assert any("rgba16.png decodes to 9400x9400" in r for r in bad), bad
    assert any("strip.png" in r and "cannot resize an image of 100000x1" in r for r in bad), bad
    # named one by one in a list, the special files are one line each, and the run does not hang
    for name, needle in (("fifo.png", "is a FIFO"), ("zero.png", "is a character device (through a link)")):
        lst = tmp_path / f"{name}.txt"
        lst.write_text(os.path.join(d, name) + "\n")
        code, lines, seconds = run_limited("infer_cam", CHEST, CHEST_TINY + [f"infer.input={lst}",
                                                                           f"output_dir={tmp_path / name}"])
        assert code == 2 and seconds < 60
        assert_one_error_line(lines, name, needle)


def test_symlink_loops_in_a_recursive_glob_end(tmp_path):
    from chexcam.data.io import list_images

    d = _hostile_folder(str(tmp_path))
    t0 = time.perf_counter()
    files = list_images(os.path.join(d, "**", "*.png"))
    assert time.perf_counter() - t0 < 5
    assert sorted(os.path.basename(f) for f in files) == ["good.png", "rgba16.png", "strip.png"]


def test_yaml_duplicate_keys_and_alias_bombs_are_refused(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("output_dir: a\ntrain:\n  epochs: 2\noutput_dir: b\n")
    code, lines, _ = run_limited("train", str(dup), [])
    assert code == 2
    assert_one_error_line(lines, "dup.yaml line 4", "duplicate key 'output_dir'", "line 1")
    levels = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):  # 9^9 values once expanded
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    for tail in ("data:\n  labels: *i\n", "data: *i\n"):
        bomb = tmp_path / "bomb.yaml"
        bomb.write_text("\n".join(levels[:-1]) + "\n" + tail.replace("*i", "*h"))
        code, lines, seconds = run_limited("train", str(bomb), [], timeout=30)
        assert code == 2 and seconds < 30
        assert_one_error_line(lines, "bomb.yaml", "more than 100,000 values")
    code, lines, _ = run_limited("train", MALARIA, ["data.labels=[&a [x, x], *a, *a]"])
    assert code == 2 and lines and "Traceback" not in "\n".join(lines)


def test_unreadable_or_non_utf8_files_exit_1_naming_the_file(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_bytes(b"a.png\n\xff\xfe.png\n")
    code, lines, _ = run_limited("infer_cam", CHEST, CHEST_TINY + [f"infer.input={bad}", f"output_dir={tmp_path}/o"])
    assert code == 1
    assert_one_error_line(lines, "list.txt", "not UTF-8")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\n")
    cfg.chmod(0)
    if os.access(cfg, os.R_OK):  # root reads anything
        return
    code, lines, _ = run_limited("train", str(cfg), [])
    assert code == 1
    assert_one_error_line(lines, "c.yaml", "ermission denied")


def test_missing_weights_and_input_are_named_at_once(tmp_path):
    code, lines, _ = run_limited("infer_cam", CHEST, [f"output_dir={tmp_path}"])
    assert code == 2
    assert_one_error_line(lines, "model.weights", "infer.input", "model.allow_random=true")


def test_nul_byte_in_a_csv_cell_is_refused(tmp_path):
    folder = str(tmp_path / "d")
    csv_path = make_csv_dataset(folder, extra_rows=["img/train_0.png\0x,1,p99,train"])
    with pytest.raises(DataError, match=r"data.csv row 34: a NUL byte in column 'path'"):
        build_splits(load_config(MALARIA, tiny_overrides(csv_path, str(tmp_path / "o"))))


def test_the_same_image_through_a_linked_folder_in_two_splits_is_refused(tmp_path):
    folder = str(tmp_path / "d")
    csv_path = make_csv_dataset(folder)
    os.symlink(os.path.join(folder, "img"), os.path.join(folder, "alias"))
    with open(csv_path, "a") as fh:
        fh.write("alias/train_0.png,0,p99,test\n")
    with pytest.raises(DataError, match=r"alias/train_0\.png \(also as .*img/train_0\.png\) in both train and test"):
        build_splits(load_config(MALARIA, tiny_overrides(csv_path, str(tmp_path / "o"))))


def test_malaria_cells_in_both_class_folders_are_refused(tmp_path):
    root = tmp_path / "cells"
    rng = np.random.default_rng(0)
    for cls in ("Parasitized", "Uninfected"):
        os.makedirs(root / cls)
        for i in range(4):
            cv2.imwrite(str(root / cls / f"C{i}P{i}_{cls}_{i}.png"), rng.integers(0, 255, (20, 20, 3), np.uint8))
    for i in range(3):
        shutil.copy(root / "Parasitized" / f"C{i}P{i}_Parasitized_{i}.png", root / "Uninfected")
    with pytest.raises(DataError, match=r"3 image\(s\) are in both .*cells/(Uninfected and .*cells/Parasitized|Parasitized and .*cells/Uninfected) \(the same name and bytes"):
        build_splits(load_config(MALARIA, [f"data.root={root}"]))


def test_output_dir_inside_the_input_glob_is_not_read_back(tmp_path):
    d = tmp_path / "in"
    os.makedirs(d)
    for i in range(2):
        cv2.imwrite(str(d / f"x{i}.png"), np.random.default_rng(i).integers(0, 255, (70, 60), np.uint8))
    over = CHEST_TINY + [f"infer.input={d}/**/*.png", f"output_dir={d}/out"]
    for _ in range(2):
        code, lines, _ = run_limited("infer_cam", CHEST, over)
        assert code == 0, lines
        summary = __import__("json").load(open(d / "out" / "cam" / "summary.json"))
        assert summary["images"] == 2


@pytest.mark.parametrize("field, value, needle", [
    ("epoch", "x", "its 'epoch' must be a whole number >= 0, got str 'x'"),
    ("epoch", -5, "its 'epoch' must be a whole number >= 0, got int -5"),
    ("config", [1, 2], "its 'config' must be a mapping, got list"),
    ("history", "abc", "its 'history' must be a list"),
    ("bad_epochs", 1.5, "its 'bad_epochs' must be a whole number"),
    ("scheduler", [1, 2, 3], "its 'scheduler' must be a mapping"),
    ("optimizer", {"garbage": "x"}, "its optimizer or scheduler state does not fit"),
])
def test_resume_checkpoint_fields_are_checked_before_use(tmp_path, trained, capsys, field, value, needle):
    csv_path, first = trained
    out = str(tmp_path / "run")
    shutil.copytree(first, out)
    ckpt = read_checkpoint(os.path.join(out, "last.pdparams"))
    ckpt[field] = value
    paddle.save(ckpt, os.path.join(out, "last.pdparams"))
    code, lines = run_cli("train", MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 2}), capsys)
    assert code == 2
    assert_one_error_line(lines, "cannot resume from", "last.pdparams", needle)


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path, trained, capsys):
    csv_path, first = trained
    out = str(tmp_path / "run")
    shutil.copytree(first, out)
    before = snapshot(out)
    code, lines = run_cli("train", MALARIA, tiny_overrides(csv_path, out, **{"train.epochs": 1}), capsys)
    assert code == 2
    assert_one_error_line(lines, "nothing to train", "finished 1 epoch(s)", "train.epochs=1", "output_dir=",
                          "train.auto_resume=false")
    after = snapshot(out)
    assert {k: after[k] for k in before if k != "train.log"} == {k: before[k] for k in before if k != "train.log"}


@pytest.mark.parametrize("dtype", ["float64", "float16", "int8", "bool", "complex64", "uint64"])
def test_weights_of_another_dtype_are_one_line(tmp_path, trained, dtype):
    csv_path, first = trained
    ckpt = read_checkpoint(os.path.join(first, "best.pdparams"))
    ckpt["model"] = {k: np.asarray(v).astype(dtype) for k, v in ckpt["model"].items()}
    path = str(tmp_path / "w.pdparams")
    paddle.save(ckpt, path)
    code, lines, _ = run_limited("infer_cam", MALARIA, tiny_overrides(csv_path, str(tmp_path / "o")) + [
        f"model.weights={path}", f"infer.input={os.path.dirname(csv_path)}/img/test_0.png"])
    assert code == 2
    assert_one_error_line(lines, "w.pdparams", f"is {dtype}, the model's float32")


def _torch_zip(path, records):
    """A zip laid out as torch.save writes it (``archive/data.pkl`` and data records)."""
    import zipfile as zf

    with zf.ZipFile(path, "w") as z:
        for name, data, method in records:
            z.writestr(zf.ZipInfo(name), data, compress_type=method)
    return str(path)


def test_torch_zip_stride_0_tensor_and_inflating_record_within_memory(tmp_path):
    torch = pytest.importorskip("torch", reason="a stride-0 tensor is made by torch (the [parity] extra)")
    from chexcam.serialization import load

    t = torch.zeros(1).expand(40000, 40000)  # 6.4 GB once copied, one element stored
    path = str(tmp_path / "expand.pth")
    torch.save({"w": t}, path)
    tracemalloc.start()
    with pytest.raises(chexcam.errors.WeightsError, match=r"expand\.pth.*size \[40000, 40000\] and stride \[0, 0\]"):
        load(path)
    # a record that declares 16 bytes and inflates to 256 MiB
    import zipfile as zf

    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    stream = b"".join(comp.compress(b"\0" * (1 << 24)) for _ in range(16)) + comp.flush()
    bomb = tmp_path / "bomb.pth"
    _torch_zip(bomb, [("archive/data.pkl", b"\0" * 16, zf.ZIP_DEFLATED)])
    raw = bomb.read_bytes()
    # swap the 16 bytes' deflate stream for the big one, keeping the declared sizes of 16
    small = zlib.compressobj(9, zlib.DEFLATED, -15)
    small_stream = small.compress(b"\0" * 16) + small.flush()
    i = raw.index(small_stream)
    raw = raw[:i] + stream + raw[i + len(small_stream):]
    raw = raw.replace(struct.pack("<L", len(small_stream)), struct.pack("<L", len(stream)))
    cd = raw.rfind(b"PK\x05\x06")
    offset = struct.unpack("<L", raw[cd + 16:cd + 20])[0] + len(stream) - len(small_stream)
    bomb.write_bytes(raw[:cd + 16] + struct.pack("<L", offset) + raw[cd + 20:])
    with pytest.raises(chexcam.errors.WeightsError, match="bomb.pth"):
        load(str(bomb))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 << 20, peak


@pytest.fixture(scope="module")
def saved_outputs(tmp_path_factory):
    """An infer_cam.py folder with records and maps of two images (the tiny chest network)."""
    base = tmp_path_factory.mktemp("saved")
    for i in range(2):
        cv2.imwrite(str(base / f"x{i}.png"), np.random.default_rng(i).integers(0, 255, (70, 60), np.uint8))
    over = CHEST_TINY + [f"infer.input={base}/*.png", f"output_dir={base}/out", "infer.save_npz=true"]
    code, lines, _ = run_limited("infer_cam", CHEST, over, timeout=120)
    assert code == 0, lines
    return str(base / "out" / "cam")


@pytest.mark.parametrize("case", ["not_json", "a_list", "object_npz", "fifo_record", "fifo_npz"])
def test_saved_outputs_that_are_broken_or_hostile(tmp_path, saved_outputs, case):
    folder = str(tmp_path / "cam")
    shutil.copytree(saved_outputs, folder)
    rec = os.path.join(folder, "x0.json")
    npz = os.path.join(folder, "x0_maps.npz")
    if case == "not_json":
        open(rec, "w").write("{not json")
    elif case == "a_list":
        open(rec, "w").write("[1, 2, 3]")
    elif case == "object_npz":
        np.savez(npz, maps=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "fifo_record":
        os.remove(rec)
        os.mkfifo(rec)
    else:
        os.remove(npz)
        os.mkfifo(npz)
    name = "x0_maps.npz" if "npz" in case else "x0.json"
    code, lines, seconds = run_limited("render_mosaic", CHEST, CHEST_TINY, extra=["--source", folder, "--out",
                                                                               str(tmp_path / "s.png")])
    assert code == 2 and seconds < 60
    assert_one_error_line(lines, name)
    code, lines, seconds = run_limited("make_viewer", CHEST, CHEST_TINY, extra=[folder])
    assert code == 0 and seconds < 60 and not any("Traceback" in ln for ln in lines), lines
    assert os.path.isfile(os.path.join(folder, "index.html"))


def test_a_sheet_too_large_is_refused_before_drawing(tmp_path, saved_outputs):
    code, lines, seconds = run_limited("render_mosaic", CHEST, CHEST_TINY, extra=[
        "--source", saved_outputs, "--tile", "100000", "--out", str(tmp_path / "s.png")])
    assert code == 2 and seconds < 60
    assert_one_error_line(lines, "the sheet would be", "lower --tile")


@pytest.mark.parametrize("delay", [0.3, 1.7])
def test_sigterm_to_the_process_group_with_loader_workers(tmp_path, trained, delay):
    """SIGTERM to the whole group (the workers die too) at two moments after the first checkpoint: exit 143,
    one line, no traceback, never training on (a bare ``except:`` in paddle's loader may swallow it once)."""
    csv_path, _ = trained
    out = str(tmp_path / "run")
    args = [sys.executable, os.path.join(TOOLS, "train.py"), "-c", MALARIA, "-q"]
    for o in tiny_overrides(csv_path, out, **{"train.epochs": 1000, "data.num_workers": 2}):
        args += ["-o", o]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    last = os.path.join(out, "last.pdparams")
    deadline = time.time() + 120
    while not os.path.exists(last) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("still running 60 s after SIGTERM")
    lines = [ln for ln in err.splitlines() if ln.strip() and " WARNING " not in ln and "ccache" not in ln
             and "warnings.warn" not in ln]
    assert proc.returncode == 143, err[-3000:]
    assert_one_error_line(lines, "SIGTERM")
    assert "Traceback" not in err and "SystemError" not in err
    assert read_checkpoint(last)["epoch"] >= 0


def test_a_training_csv_naming_a_fifo_or_dev_zero_is_one_line(tmp_path):
    folder = str(tmp_path / "d")
    csv_path = make_csv_dataset(folder)
    os.mkfifo(os.path.join(folder, "img", "fifo.png"))
    os.symlink("/dev/zero", os.path.join(folder, "img", "zero.png"))
    for name, needle in (("fifo.png", "is a FIFO"), ("zero.png", "character device")):
        with open(csv_path) as fh:
            text = fh.read()
        path = os.path.join(folder, f"with_{name}.csv")
        with open(path, "w") as fh:
            fh.write(text + f"img/{name},1,p99,train\n")
        code, lines, seconds = run_limited("train", MALARIA, tiny_overrides(path, str(tmp_path / name), **{
            "train.epochs": 1, "data.num_workers": 2}))
        assert code == 2 and seconds < 60
        assert_one_error_line(lines, name, needle)


def test_a_misspelled_box_finding_names_the_line_and_the_closest_name(tmp_path):
    from chexcam.metrics.localization import read_bbox_csv

    path = tmp_path / "BBox_List_2017.csv"
    path.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Cardiomegaly,1,2,3,4\n"
                    "b.png,Cardiomegally,1,2,3,4\n")
    with pytest.raises(DataError, match=r"line 3: unknown finding 'Cardiomegally'; did you mean 'Cardiomegaly'"):
        read_bbox_csv(str(path))


def test_non_finite_weights_name_the_file(tmp_path, trained):
    csv_path, first = trained
    ckpt = read_checkpoint(os.path.join(first, "best.pdparams"))
    name = next(iter(ckpt["model"]))
    ckpt["model"][name] = np.full_like(ckpt["model"][name], np.nan)
    path = str(tmp_path / "nan.pdparams")
    paddle.save(ckpt, path)
    for tool, extra in (("infer_cam", [f"infer.input={os.path.dirname(csv_path)}/img/test_0.png"]), ("export", [])):
        code, lines, _ = run_limited(tool, MALARIA, tiny_overrides(csv_path, str(tmp_path / tool)) + [
            f"model.weights={path}"] + extra)
        assert code == 2, (tool, lines)
        assert_one_error_line(lines, "nan.pdparams", "non-finite weights", name)
