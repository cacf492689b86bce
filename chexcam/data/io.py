"""Robust image decoding with OpenCV: any PNG/JPEG mode in, 8-bit RGB out, one-line errors.

Grayscale is replicated to three channels, the alpha of RGBA is dropped (the NIH release has a few
RGBA files whose alpha is constant), and 16-bit images are stretched per image from their own min..max
to 0..255 (12-bit data stored in 16-bit containers would otherwise turn almost black).

DICOM files (by extension ``.dcm``/``.dicom`` or the ``DICM`` magic at byte 128) are read with pydicom
(the optional ``[dicom]`` extra): modality LUT, then the VOI LUT or window, MONOCHROME1 inverted.

No file is trusted to be small: the pixel count is read from the header (PNG ``IHDR``, JPEG ``SOF``, DICOM
``Rows``/``Columns``/``NumberOfFrames``, any other format through Pillow's lazy header read) and a file over
``max_pixels`` (``data.max_pixels``, by default Pillow's decompression-bomb limit) is refused before a
single pixel is decoded. A format whose size no header reader knows is decoded by OpenCV (whose own cap is
2**30 pixels) and refused afterwards.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import warnings
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..config import DEFAULT_MAX_PIXELS
from ..errors import BadImageError, DataError

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
DICOM_EXTS = (".dcm", ".dicom")
_HEAD_BYTES = 1 << 16  # read first: the size of nearly every image is in there


def is_dicom(path: str, head: bytes) -> bool:
    """A DICOM file: by extension, or the ``DICM`` magic after the 128-byte preamble."""
    return path.lower().endswith(DICOM_EXTS) or head[128:132] == b"DICM"


def _first(value) -> float:
    """A DICOM number that may be multi-valued (several windows): the first one."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI window (PS3.3 C.11.2.1.2.1) onto 0..255 uint8."""
    width = max(width, 1.0)
    y = (arr - (center - 0.5)) / (width - 1.0) + 0.5 if width > 1 else (arr >= center).astype(np.float64)
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def read_dicom(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a DICOM image as uint8 RGB ``[H, W, 3]`` (first frame of a multi-frame file).

    Grayscale: the modality LUT (rescale slope/intercept) is applied, then the VOI LUT sequence or the
    first window centre/width (linear, as the standard defines it); without either the image is
    stretched from its own min..max. ``MONOCHROME1`` (white = low values) is inverted so bone is white.
    Colour images are converted to RGB.

    Rows x Columns x NumberOfFrames (pydicom decodes every frame) is checked against ``max_pixels`` from
    the header alone, before the pixel data is read.

    Raises:
        BadImageError: pydicom is missing, the file cannot be parsed, has no pixel data or is too large.
    """
    try:
        import pydicom
    except ImportError:
        raise BadImageError(f"{path} is DICOM; reading it needs pydicom: pip install 'chexcam[dicom]'") from None
    try:
        head = pydicom.dcmread(path, stop_before_pixels=True)
        size = (int(head.get("Columns", 0) or 0), int(head.get("Rows", 0) or 0))
        frames = int(head.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # pydicom raises many types for broken files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImageError(f"cannot decode DICOM {path}: {msg}") from None
    check_pixels(path, size, max_pixels, frames)
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadImageError(f"cannot decode DICOM {path}: {msg}") from None
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut, convert_color_space
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if samples == 3:
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        return np.ascontiguousarray(to_uint8(arr))
    if arr.ndim != 2:
        raise BadImageError(f"unsupported DICOM pixel layout {list(arr.shape)}: {path}")
    arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2]) or 16
        img = np.clip(np.asarray(apply_voi_lut(arr, ds), dtype=np.float64), 0, 2 ** bits - 1)
        img = np.rint(img * (255.0 / (2 ** bits - 1))).astype(np.uint8)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        img = _window(arr, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        img = to_uint8(arr)
    if photometric == "MONOCHROME1":
        img = 255 - img
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def _png_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from a PNG's ``IHDR`` (always the first chunk), or None."""
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from the first start-of-frame marker (SOF0..SOF15 but DHT/JPG/DAC), or None."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


def _pillow_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of any other format Pillow knows, from its lazy header read (nothing decoded)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with scikit-image
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return tuple(im.size)
    except Image.DecompressionBombError as exc:  # over 2x Pillow's own limit: it names the count only
        m = _PIL_PIXELS.search(str(exc))
        return (int(m.group(1)), 1) if m else None  # (pixels, 1): the count is all that is known
    except Exception:  # not a format Pillow can size: OpenCV decodes it and the size is checked after
        return None


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of an encoded image read from its header alone, or None when unknown."""
    if data.startswith(_PNG_SIG):
        return _png_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return _pillow_size(data)


def check_pixels(path: str, size: Optional[Tuple[int, int]], max_pixels: int, frames: int = 1) -> None:
    """Refuse an image of more than ``max_pixels`` pixels (``data.max_pixels``) with one line."""
    if size is None:
        return
    w, h = size
    pixels = int(w) * int(h) * max(1, int(frames))
    if pixels > max_pixels:
        dims = (f"{w}x{h}" if h > 1 else "") + (f" x {frames} frames" if frames > 1 else "")
        raise BadImageError(f"image too large: {path} is {dims + ' = ' if dims else ''}{pixels:,} pixels, over "
                            f"data.max_pixels={max_pixels:,}; raise data.max_pixels to read it")


def _check_complete(path: str, data: bytes) -> None:
    """Reject truncated PNG/JPEG files, which OpenCV may decode partially without an error."""
    if data.startswith(_PNG_SIG):
        if _PNG_END not in data[-64:]:
            raise BadImageError(f"truncated PNG (no IEND chunk): {path}")
    elif data.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in data[-1024:]:
            raise BadImageError(f"truncated JPEG (no end-of-image marker): {path}")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit copy of an image: uint8 unchanged, higher depths stretched from their own min..max."""
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float64)
    lo, hi = float(img.min()), float(img.max())
    if hi - lo <= 0:
        return np.zeros(img.shape, dtype=np.uint8)
    return np.clip(np.rint((img - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_rgb(img: np.ndarray, path: str = "<array>") -> np.ndarray:
    """OpenCV-decoded array (gray, BGR or BGRA, any depth) -> uint8 RGB ``[H, W, 3]``."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    img = to_uint8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise BadImageError(f"unsupported image layout {img.shape}: {path}")


def read_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file (PNG/JPEG/... of any mode, or DICOM) as uint8 RGB ``[H, W, 3]``.

    Args:
        max_pixels: refuse images with more pixels than this (``data.max_pixels``), read from the header
            before decoding.

    Raises:
        BadImageError: missing, empty, truncated, undecodable or too large a file (the message names it).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadImageError(f"image not found: {path}")
    if os.path.isdir(path):
        raise BadImageError(f"expected an image file, got a directory: {path}")
    size = None
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
            if not head:
                raise BadImageError(f"empty image file: {path}")
            if is_dicom(path, head[:132]):
                return read_dicom(path, max_pixels)
            size = image_size(head)
            check_pixels(path, size, max_pixels)  # before the rest of a huge file is even read
            data = head + fh.read()
    except OSError as exc:
        raise BadImageError(f"cannot read image {path}: {exc.strerror}") from None
    if size is None:  # a header beyond the first bytes (large JPEG metadata, a TIFF directory at the end)
        size = image_size(data)
        check_pixels(path, size, max_pixels)
    _check_complete(path, data)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. over OpenCV's own size cap, or a decoder assertion
        reason = next((ln.strip() for ln in str(exc).splitlines() if "error:" in ln), "OpenCV error")
        raise BadImageError(f"cannot decode image {path}: {reason}") from None
    if img is None or img.size == 0:
        raise BadImageError(f"cannot decode image (corrupt or not an image): {path}")
    if size is None:
        check_pixels(path, img.shape[1::-1], max_pixels)
    return to_rgb(img, path)


# ---------------------------------------------------------------------------------------------
# lists of images: the one reader of image lists and folders

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff") + DICOM_EXTS


def read_list(path: str, column: str = "path", what: str = "list") -> List[str]:
    """Names from a CSV (column ``column``, else ``path``, ``Image Index`` or the first) or a text file
    (first whitespace-separated field per line; blank lines and ``#`` comments skipped), as written.

    Raises:
        DataError: the file cannot be read or decoded as UTF-8 (one line naming it and ``what`` it is).
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            if path.lower().endswith(".csv"):
                reader = csv.reader(fh)
                header = [h.strip() for h in next(reader, [])]
                col = next((header.index(c) for c in (column, "path", "Image Index") if c in header), 0)
                return [row[col].strip() for row in reader if len(row) > col and row[col].strip()]
            return [line.split()[0] for line in fh if line.strip() and not line.lstrip().startswith("#")]
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {what} {path}: not UTF-8 text (byte {exc.start})") from None


def list_images(spec: str) -> List[str]:
    """One file, a folder (its images, sorted) or a glob pattern -> paths, each real file once.

    Raises:
        DataError: nothing exists at ``spec`` or it matched no image.
    """
    if os.path.isdir(spec):
        files = [os.path.join(spec, f) for f in sorted(os.listdir(spec)) if f.lower().endswith(IMAGE_EXTS)]
    elif any(ch in spec for ch in "*?["):
        files = sorted(f for f in glob.glob(spec, recursive=True) if os.path.isfile(f))
    elif os.path.isfile(spec):
        files = [spec]
    else:
        raise DataError(f"input not found: {spec} (expected an image, a folder, a glob, a .csv/.txt list "
                        "or split:train|val|test)")
    seen, unique = set(), []
    for f in files:  # a '**' glob through a link reaches the same file by several names
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            unique.append(f)
    if not unique:
        raise DataError(f"input {spec} matched no images ({', '.join(IMAGE_EXTS)})")
    return unique
