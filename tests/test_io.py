import os

import cv2
import numpy as np
import pytest

from chexcam.data.io import read_image
from chexcam.errors import BadImageError

from .conftest import ROOT, shared_path


def _write(path, arr):
    assert cv2.imwrite(str(path), arr)
    return str(path)


def test_modes_become_8bit_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = read_image(_write(tmp_path / "g.png", gray))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and (out[..., 0] == gray).all()

    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 2] = 200  # red in BGR order
    bgra[..., 3] = 255
    out = read_image(_write(tmp_path / "rgba.png", bgra))
    assert out.shape == (4, 4, 3) and (out[..., 0] == 200).all() and (out[..., 2] == 0).all()

    g16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 256 + 1000)
    out = read_image(_write(tmp_path / "g16.png", g16))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "truncated_png", "truncated_jpg", "dir"])
def test_bad_files_name_the_file(tmp_path, kind):
    good = np.full((32, 32, 3), 128, np.uint8)
    if kind == "missing":
        path = str(tmp_path / "missing.png")
    elif kind == "empty":
        path = str(tmp_path / "empty.png")
        open(path, "wb").close()
    elif kind == "corrupt":
        path = str(tmp_path / "corrupt.png")
        open(path, "wb").write(b"not an image at all" * 10)
    elif kind == "truncated_png":
        full = _write(tmp_path / "full.png", good)
        data = open(full, "rb").read()
        path = str(tmp_path / "trunc.png")
        open(path, "wb").write(data[: len(data) // 2])
    elif kind == "truncated_jpg":
        full = _write(tmp_path / "full.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
        data = open(full, "rb").read()
        path = str(tmp_path / "trunc.jpg")
        open(path, "wb").write(data[: len(data) // 2])
    else:
        path = str(tmp_path)
    with pytest.raises(BadImageError) as info:
        read_image(path)
    assert os.path.basename(path) in str(info.value) and "\n" not in str(info.value)


def test_bundled_nih_rgba_image_reads_as_rgb():
    path = os.path.join(ROOT, "data", "chestxray14_sample", "images", "00001369_000.png")
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert raw.shape[2] == 4  # the NIH release really has RGBA files
    out = read_image(path)
    assert out.shape == (1024, 1024, 3) and out.dtype == np.uint8


def test_shared_nih_images_all_decode():
    folder = shared_path("chestxray14", "images")
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    assert len(pngs) == 12
    for f in pngs:
        img = read_image(os.path.join(folder, f))
        assert img.shape == (1024, 1024, 3)
