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


@pytest.mark.shared_data
def test_shared_nih_images_all_decode():
    folder = shared_path("chestxray14", "images")
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    assert len(pngs) == 12
    for f in pngs:
        img = read_image(os.path.join(folder, f))
        assert img.shape == (1024, 1024, 3)


def _write_dicom(path, pixels, photometric="MONOCHROME2", window=None, slope=1.0, intercept=0.0, rgb=False):
    """A minimal valid DICOM file written by pydicom (secondary-capture)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 8 if rgb else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if not rgb:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    try:
        ds.save_as(str(path), enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
    return str(path)


def test_dicom_window_and_monochrome1(tmp_path):
    pytest.importorskip("pydicom")
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 200)  # 0 .. 3000 (12-bit)
    # window centre 1500, width 1001: values <= 1000 -> 0, >= 2000 -> 255, linear between
    mono2 = read_image(_write_dicom(tmp_path / "a.dcm", ramp, window=(1500, 1001)))
    assert mono2.shape == (4, 4, 3) and mono2.dtype == np.uint8
    expect = np.rint(np.clip((ramp - 1499.5) / 1000.0 + 0.5, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(mono2[..., 0], expect)
    mono1 = read_image(_write_dicom(tmp_path / "b.dcm", ramp, "MONOCHROME1", window=(1500, 1001)))
    np.testing.assert_array_equal(mono1[..., 0], 255 - expect)  # inverted: low values are white
    # no window: stretched from the image's own range, after the modality LUT
    plain = read_image(_write_dicom(tmp_path / "c.dcm", ramp, slope=2.0, intercept=-100.0))
    assert plain.min() == 0 and plain.max() == 255 and plain[0, 0, 0] == 0


def test_dicom_found_by_magic_rgb_and_broken(tmp_path):
    pytest.importorskip("pydicom")
    rgb = np.zeros((3, 5, 3), np.uint8)
    rgb[..., 0] = 200
    path = _write_dicom(tmp_path / "noext", rgb, rgb=True)  # no extension: the DICM magic decides
    out = read_image(path)
    assert out.shape == (3, 5, 3) and (out[..., 0] == 200).all() and (out[..., 2] == 0).all()
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    with pytest.raises(BadImageError, match="broken.dcm") as info:
        read_image(str(bad))
    assert "\n" not in str(info.value)


def test_dicom_without_pydicom_is_a_one_line_error(tmp_path, monkeypatch):
    import builtins

    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(BadImageError, match=r"pip install 'chexcam\[dicom\]'"):
        read_image(str(path))
