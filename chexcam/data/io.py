"""Robust image decoding with OpenCV: any PNG/JPEG mode in, 8-bit RGB out, one-line errors.

Grayscale is replicated to three channels, the alpha of RGBA is dropped (the NIH release has a few
RGBA files whose alpha is constant), and 16-bit images are stretched per image from their own min..max
to 0..255 (12-bit data stored in 16-bit containers would otherwise turn almost black).

DICOM files (by extension ``.dcm``/``.dicom`` or the ``DICM`` magic at byte 128) are read with pydicom
(the optional ``[dicom]`` extra): modality LUT, then the VOI LUT or window, MONOCHROME1 inverted.

No file is trusted to be small: the pixel count is read from the header (PNG ``IHDR``, JPEG ``SOF``, DICOM
``Rows``/``Columns``/``NumberOfFrames``, any other format through Pillow's lazy header read) and a file over
``max_pixels`` (``data.max_pixels``, by default Pillow's decompression-bomb limit) is refused before a
single pixel is decoded. So is one whose decoded array (pixels x channels x bytes per sample, as the header
declares them) would exceed ``4 * max_pixels`` bytes (an 8-bit RGBA image of ``max_pixels``), one whose file is
larger than any encoding of its declared pixels needs (a sparse file behind a small header), and one whose size
no header reader can tell (OpenCV would decode it blindly). Only regular files are images: a FIFO, a device
such as ``/dev/zero`` (or a link to one) or a socket is refused before it is opened for reading.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import os
import re
import stat
import warnings
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..config import DEFAULT_MAX_PIXELS
from ..errors import EXIT_ENVIRONMENT, BadImageError, DataError

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
DICOM_EXTS = (".dcm", ".dicom")
_HEAD_BYTES = 1 << 16  # read first: the size of nearly every image is in there
#: bytes of a decoded pixel that ``max_pixels`` pays for (8-bit RGBA); deeper or wider images count more
BYTES_PER_PIXEL = 4
#: bytes an encoded file may hold beyond its decoded pixels (metadata, ICC profiles, thumbnails)
_FILE_SLACK = 16 << 20


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


#: channels OpenCV decodes a PNG colour type to (IMREAD_UNCHANGED; a palette may carry transparency)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}


def _png_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from a PNG's ``IHDR`` (always the first chunk), or None."""
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _png_sample(data: bytes) -> Tuple[int, int]:
    """``(channels, bytes per sample)`` a PNG decodes to, from its ``IHDR`` (16-bit: 2 bytes)."""
    if len(data) >= 26:
        return _PNG_CHANNELS.get(data[25], 4), 2 if data[24] == 16 else 1
    return 4, 2


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from the first start-of-frame marker (SOF0..SOF15 but DHT/JPG/DAC), or None."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:  # extraneous bytes before a marker: libjpeg skips them, and so does this walk
            i = data.find(b"\xff", i)
            if i < 0:
                return None
            continue
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
        return _jpeg_size(data) or _pillow_size(data)
    return _pillow_size(data)


def decoded_bytes(data: bytes, size: Tuple[int, int]) -> int:
    """Bytes OpenCV allocates to decode an image of ``size`` (``IMREAD_UNCHANGED``): pixels x channels x bytes
    per sample, from the PNG header; JPEG and other formats at most 4 channels of 1 byte (what ``max_pixels``
    pays for)."""
    pixels = int(size[0]) * int(size[1])
    if data.startswith(_PNG_SIG):
        channels, depth = _png_sample(data)
    else:
        channels, depth = 4, 1
    return pixels * channels * depth


def check_decoded(path: str, data: bytes, size: Tuple[int, int], max_pixels: int, file_bytes: int) -> None:
    """Refuse an image whose decoded array would exceed ``BYTES_PER_PIXEL * max_pixels`` bytes, or whose file is
    larger than any encoding of its pixels needs (its bytes are read into memory before decoding)."""
    need, budget = decoded_bytes(data, size), BYTES_PER_PIXEL * int(max_pixels)
    if need > budget:
        per = need // max(1, size[0] * size[1])
        raise BadImageError(f"image too large: {path} decodes to {size[0]}x{size[1]} pixels of {per} bytes = "
                            f"{need / 2**20:,.1f} MB, over the {budget / 2**20:,.1f} MB that data.max_pixels="
                            f"{max_pixels:,} allows ({BYTES_PER_PIXEL} bytes a pixel); raise data.max_pixels to read it")
    if file_bytes > 2 * need + _FILE_SLACK:
        raise BadImageError(f"image file too large for its pixels: {path} is {file_bytes / 2**20:,.0f} MB on disk for "
                            f"{size[0]}x{size[1]} pixels ({need / 2**20:,.1f} MB decoded)")


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
    """8-bit copy of an image: uint8 unchanged, higher depths stretched from their own min..max.

    16-bit images go through a 65536-entry table (the same numbers as the float formula, without a float64
    copy of the image: 8 bytes a sample for a 16-bit RGBA scan would be four times its decoded size)."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        lo, hi = int(img.min()), int(img.max())
        if hi - lo <= 0:
            return np.zeros(img.shape, dtype=np.uint8)
        lut = np.zeros(65536, dtype=np.uint8)
        lut[lo:hi + 1] = np.clip(np.rint((np.arange(lo, hi + 1, dtype=np.float64) - lo) * (255.0 / (hi - lo))), 0, 255)
        return lut[img]
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
    size = None
    try:
        with open_regular(path, "image") as fh:
            file_bytes = os.fstat(fh.fileno()).st_size
            head = fh.read(_HEAD_BYTES)
            if not head:
                raise BadImageError(f"empty image file: {path}")
            if is_dicom(path, head[:132]):
                return read_dicom(path, max_pixels)
            size = image_size(head)
            check_pixels(path, size, max_pixels)  # before the rest of a huge file is even read
            if size is not None:
                check_decoded(path, head, size, max_pixels, file_bytes)
            elif file_bytes > BYTES_PER_PIXEL * int(max_pixels) + _FILE_SLACK:
                raise BadImageError(f"image file too large: {path} is {file_bytes / 2**20:,.0f} MB and its header "
                                    "does not say its size in the first 64 kB")
            data = head + fh.read(max(0, file_bytes - len(head)) + 1)
    except OSError as exc:
        raise BadImageError(f"cannot read image {path}: {exc.strerror}", exit_code=EXIT_ENVIRONMENT) from None
    if size is None:  # a header beyond the first bytes (large JPEG metadata, a TIFF directory at the end)
        size = image_size(data)
        if size is None:  # OpenCV would decode it blindly, to whatever size it says
            raise BadImageError(f"cannot decode image (no PNG, JPEG or other header that gives its size): {path}")
        check_pixels(path, size, max_pixels)
        check_decoded(path, data, size, max_pixels, len(data))
    _check_complete(path, data)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            raise BadImageError(f"cannot decode image (corrupt or not an image): {path}")
        return to_rgb(img, path)
    except cv2.error as exc:  # e.g. over OpenCV's own size cap, or a decoder assertion
        reason = next((ln.strip() for ln in str(exc).splitlines() if "error:" in ln), "OpenCV error")
        raise BadImageError(f"cannot decode image {path}: {reason}") from None
    except MemoryError:  # the machine has less free than data.max_pixels allows: name the file
        raise BadImageError(f"out of memory decoding image {path} ({size[0]}x{size[1]} pixels); lower "
                            "data.max_pixels or free memory", exit_code=EXIT_ENVIRONMENT) from None


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def check_regular(path: str, mode: int, what: str = "image") -> None:
    """Refuse anything but a regular file (``mode`` from ``os.stat``) with one line naming ``path``: a
    :class:`BadImageError` for an image, else a :class:`DataError` naming ``what`` the file is."""
    if stat.S_ISREG(mode):
        return
    error = BadImageError if what == "image" else DataError
    if stat.S_ISDIR(mode):
        raise error(f"expected an image file, got a directory: {path}" if what == "image" else
                    f"cannot read {what} {path}: it is a folder, not a file")
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    link = " (through a link)" if os.path.islink(path) else ""
    raise error(f"not a regular file: {path} is {kind}{link}" if what == "image" else
                f"cannot read {what} {path}: it is {kind}{link}, not a regular file")


def open_regular(path: str, what: str = "image"):
    """Open ``path`` for binary reading if it is a regular file; a FIFO (which would block ``open`` until a writer
    comes), a device such as ``/dev/zero`` (endless) or a socket is refused first, by ``os.stat``. Raises
    :class:`BadImageError` (``what == "image"``) or :class:`DataError`; ``OSError`` for what the system refuses."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if what == "image":
            raise BadImageError(f"image not found: {path}") from None
        raise
    check_regular(path, st.st_mode, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        check_regular(path, os.fstat(fd).st_mode, what)  # replaced between the two looks
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------------------------
# saved outputs: JSON records and map arrays, as untrusted as any input

#: the largest JSON record or map file read back (a record is a few kB; maps of 14 classes at 1024 px, 60 MB)
MAX_SAVED_BYTES = 256 << 20


def read_json_file(path: str, what: str = "JSON record"):
    """The JSON value in ``path``, a regular UTF-8 file of at most :data:`MAX_SAVED_BYTES`.

    Raises:
        DataError: not a regular file (a FIFO would block), too large, unreadable, not UTF-8 or not JSON (one
            line naming ``path``; exit status 1 when the system refused or the text is not UTF-8).
    """
    import json

    try:
        with open_regular(path, what) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_SAVED_BYTES:
                raise DataError(f"cannot read {what} {path}: {size:,} bytes, over {MAX_SAVED_BYTES:,}")
            text = fh.read(MAX_SAVED_BYTES + 1).decode("utf-8")
        return json.loads(text)
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}", exit_code=EXIT_ENVIRONMENT) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {what} {path}: not UTF-8 text (byte {exc.start})",
                        exit_code=EXIT_ENVIRONMENT) from None
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise DataError(f"cannot read {what} {path}: not JSON ({str(exc).splitlines()[0][:120]})") from None


def read_maps_file(path: str, key: str = "maps") -> np.ndarray:
    """The float32 array ``key`` of a saved ``.npz`` (no pickled objects, at most :data:`MAX_SAVED_BYTES` once
    read).

    Raises:
        DataError: not a regular file, not an npz, an object array, no ``key``, not numbers, or too large.
    """
    import zipfile

    try:
        with open_regular(path, "map file") as fh, np.load(fh, allow_pickle=False) as z:
            if key not in z.files:
                raise DataError(f"cannot read map file {path}: no '{key}' array (it has {', '.join(z.files) or 'none'})")
            info = z.zip.getinfo(f"{key}.npy")
            if info.file_size > MAX_SAVED_BYTES:
                raise DataError(f"cannot read map file {path}: '{key}' is {info.file_size:,} bytes, over "
                                f"{MAX_SAVED_BYTES:,}")
            arr = z[key]
    except OSError as exc:
        raise DataError(f"cannot read map file {path}: {exc.strerror or exc}", exit_code=EXIT_ENVIRONMENT) from None
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # object arrays, a broken archive
        raise DataError(f"cannot read map file {path}: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}") from None
    if arr.dtype.kind not in "biuf":
        raise DataError(f"cannot read map file {path}: '{key}' holds {arr.dtype} values, not numbers")
    return arr.astype(np.float32, copy=False)


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
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}", exit_code=EXIT_ENVIRONMENT) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read {what} {path}: not UTF-8 text (byte {exc.start})",
                        exit_code=EXIT_ENVIRONMENT) from None


def _is_regular(path: str) -> bool:
    """A regular file (through links); a FIFO, a device, a socket, a folder or a broken link is not."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _match_parts(parts: List[str], names: List[str]) -> bool:
    """``names`` (a path's components) match the glob components ``parts``; ``**`` matches any number."""
    if not parts:
        return not names
    if parts[0] == "**":  # as glob's: hidden folders are not crossed
        return any(_match_parts(parts[1:], names[i:]) for i in range(len(names) + 1)
                   if not any(n.startswith(".") for n in names[:i]))
    if not names or (names[0].startswith(".") and not parts[0].startswith(".")):  # glob's '*' skips hidden names
        return False
    return fnmatch.fnmatchcase(names[0], parts[0]) and _match_parts(parts[1:], names[1:])


def walk_glob(pattern: str) -> List[str]:
    """The files a recursive glob (``**``) matches, walking each real folder once: a link to a folder is followed,
    but a folder reached again (a link to itself or to a parent) is not walked twice, so a loop ends."""
    parts = pattern.split(os.sep)
    first = next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))
    roots = [os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else ".")]
    rest = parts[first:]
    found, seen = [], set()
    for root in roots:
        for top, dirs, files in os.walk(root, followlinks=True):
            real = os.path.realpath(top)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            rel = os.path.relpath(top, root)
            names = [] if rel == "." else rel.split(os.sep)
            for f in files:
                if _match_parts(rest, names + [f]):
                    found.append(os.path.join(top, f) if root != "." or pattern.startswith(".") else
                                 os.path.join(*(names + [f])))
    return found


def list_images(spec: str) -> List[str]:
    """One file, a folder (its images, sorted) or a glob pattern -> paths, each real file once. Only regular
    files are images (a FIFO named ``x.png`` or a link to ``/dev/zero`` is not listed); a ``**`` glob walks each
    real folder once, so links that loop end.

    Raises:
        DataError: nothing exists at ``spec`` or it matched no image.
    """
    if os.path.isdir(spec):
        files = [os.path.join(spec, f) for f in sorted(os.listdir(spec)) if f.lower().endswith(IMAGE_EXTS)]
    elif "**" in spec:
        files = sorted(walk_glob(spec))
    elif any(ch in spec for ch in "*?["):
        files = sorted(glob.glob(spec))
    elif os.path.exists(spec):
        files = [spec]
        if not _is_regular(spec):
            st = os.stat(spec)
            check_regular(spec, st.st_mode, "input")
    else:
        raise DataError(f"input not found: {spec} (expected an image, a folder, a glob, a .csv/.txt list "
                        "or split:train|val|test)")
    seen, unique = set(), []
    for f in files:  # a '**' glob through a link reaches the same file by several names
        if not _is_regular(f):
            continue
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            unique.append(f)
    if not unique:
        raise DataError(f"input {spec} matched no images ({', '.join(IMAGE_EXTS)})")
    return unique
