"""Image file decoding: DICOM (uncompressed, RLE, JPEG lossless, JPEG-LS, JPEG 2000), PNG / TIFF / JPEG,
and DDSM ``.LJPEG``, with a pixel budget checked from the header before any pixel is decoded.

* Compressed DICOM goes through pydicom's decoders: RLE natively, JPEG lossless and JPEG-LS through
  ``pylibjpeg-libjpeg``, JPEG 2000 through ``pylibjpeg-openjpeg`` (project dependencies).
* ``PixelRepresentation`` 1 (signed samples) is reported in :class:`ImageInfo` (``signed``) so the 8-bit
  mapping can offset the stored range instead of clipping its negative half to black.
* PNG / TIFF / JPEG: 8-bit files are 8-bit; 16-bit containers report 16 bits (a lower depth known from
  metadata is applied by :func:`mammo.components.imaging.resolve_bits`, only where the data fits it).
  Floating-point images are mapped to 16 bits when their values are normalised intensities in [0, 1]
  or whole numbers in [0, 65535]; any other float image (negative, NaN, fractional above 1) is refused
  with the reason, never clipped silently.
* DDSM ``.LJPEG`` files are lossless JPEG streams; they are decoded with libjpeg (``pylibjpeg-libjpeg``).
  A stream it cannot decode (some DDSM files carry a known PVRG encoder quirk) fails with an error that
  says how to convert the file.
* ``max_pixels``: rows x columns (x frames x samples) from the header, read by the project's one bounded
  header reader (:func:`mammo.components.headers.read_header`); a larger image is refused with
  :class:`ImageTooLarge` naming the file before anything is decoded (a 248 KB PNG can declare
  16000 x 16000). A deflated DICOM is inflated with a byte bound before pydicom reads it whole.

Files are local paths or ``gs://`` URIs (read through :mod:`mammo.components.storage`). Only technical
header values are returned; patient-identifying values never leave this module.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from mammo.components.headers import (DEFLATED, HEADER_TOO_LARGE, LJPEG_SUFFIXES, HeaderError, dicom_spacing,
                                      is_dicom, read_header)

#: the DICOM attributes that may leave a reader; everything else stays behind
TECHNICAL_TAGS = ("Rows", "Columns", "BitsStored", "PhotometricInterpretation", "PixelSpacing", "Manufacturer")
LJPEG_HELP = ("convert it to a 16-bit PNG or DICOM first, e.g. with the DDSM tools (PVRG `jpeg -d -s FILE.LJPEG` "
              "then `ddsmraw2pnm`) or GDCM's `gdcmconv --raw`, and list the converted file")


class ImageTooLarge(ValueError):
    """The header declares more pixels than the configured budget."""


class UnsupportedImage(ValueError):
    """The file is an image this module refuses to map (the message says why and what to do)."""


@dataclass(frozen=True)
class ImageInfo:
    rows: int
    cols: int
    bits_stored: int
    photometric: str
    manufacturer: str = ""
    #: DICOM PixelRepresentation 1: two's-complement samples
    signed: bool = False
    #: from PixelSpacing / ImagerPixelSpacing (row spacing, mm); None when the file does not say
    pixel_spacing_mm: float | None = None


# -- opening --------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_binary(path: str | Path, whole: bool = True) -> Iterator[IO[bytes]]:
    """A binary file object for a local path or a ``gs://`` URI, through :mod:`storage` (``whole``: a
    GCS object in one download, as its pixels are read in full anyway; else ranged reads)."""
    from mammo.components import storage  # (and google.api_core) only once an image is read

    uri = str(path)
    if whole and storage.is_gcs(uri):
        yield io.BytesIO(storage.read_bytes(uri))
        return
    with storage.open_read(uri) as fh:
        yield fh


def check_budget(path: str | Path, rows: int, cols: int, max_pixels: int | None, extra: int = 1) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (None/0 = no budget)."""
    if max_pixels and rows * cols * max(extra, 1) > max_pixels:
        raise ImageTooLarge(f"{path}: header declares {rows}x{cols}"
                            + (f"x{extra}" if extra > 1 else "")
                            + f" = {rows * cols * max(extra, 1):,} pixels, over the budget of {max_pixels:,} "
                            "(patches.max_pixels); refused before decoding")


def check_header(path: str | Path, max_pixels: int | None):
    """Read the file's header with the one bounded header reader (:mod:`mammo.components.headers`) and
    refuse it when it declares more than ``max_pixels`` pixels; returns the header (None without a budget).

    A header that cannot be read within its byte bound (a deflated DICOM inflating past it) is
    :class:`ImageTooLarge`; any other unreadable header is :class:`UnsupportedImage` with its reason.
    """
    if not max_pixels:
        return None
    from PIL import Image

    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the budget below decides, naming the file and the setting
    try:
        header = read_header(str(path))
    except HeaderError as exc:
        kind = ImageTooLarge if exc.reason == HEADER_TOO_LARGE else UnsupportedImage
        raise kind(f"{path}: {exc.reason}: {exc.message}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    check_budget(path, header.rows, header.cols, max_pixels, header.frames * header.samples_per_pixel)
    return header


# -- DICOM ----------------------------------------------------------------------------------------


def _dicom_info(ds) -> ImageInfo:
    return ImageInfo(
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        bits_stored=int(getattr(ds, "BitsStored", 16) or 16),
        photometric=str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")),
        manufacturer=str(getattr(ds, "Manufacturer", "") or ""),
        signed=int(getattr(ds, "PixelRepresentation", 0) or 0) == 1,
        pixel_spacing_mm=dicom_spacing(ds)[0],
    )


def dicom_info(path: str | Path) -> ImageInfo:
    """Technical header values of a DICOM file, without its pixels (on GCS: only the first blocks)."""
    import pydicom

    with open_binary(path, whole=False) as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
    return _dicom_info(ds)


def _bounded_inflate(data: bytes, limit: int, path: str | Path) -> None:
    """Inflate a deflated dataset up to ``limit`` bytes; refuse it if it inflates to more."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = len(inflater.decompress(data, limit + 1))
    if total > limit or inflater.unconsumed_tail:
        raise ImageTooLarge(f"{path}: deflated DICOM inflates to more than {limit:,} bytes; refused")


def read_dicom(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Pixel array (as stored: signed samples stay signed) and technical info of a DICOM file."""
    header = check_header(path, max_pixels)
    with open_binary(path) as fh:
        return _read_dicom_fh(fh, path, max_pixels, header.transfer_syntax if header else "")


def _read_dicom_fh(fh: IO[bytes], path: str | Path, max_pixels: int | None,
                   transfer_syntax: str = "") -> tuple[np.ndarray, ImageInfo]:
    import pydicom

    if max_pixels and transfer_syntax == DEFLATED:  # pydicom would inflate it whole: bound it first
        raw = fh.read()
        _bounded_inflate(raw[_meta_end(raw):], max_pixels * 8 + (1 << 20), path)
        fh = io.BytesIO(raw)
    ds = pydicom.dcmread(fh)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise UnsupportedImage(f"{path}: cannot decode pixel data ({name}): {type(exc).__name__}: {exc}") from exc
    if pixels.ndim != 2:
        raise UnsupportedImage(f"{path}: expected a single-frame grayscale image, got shape {pixels.shape}")
    return pixels, _dicom_info(ds)


def _meta_end(raw: bytes) -> int:
    """Offset of the first byte after the file meta group (group 0002, explicit VR little endian)."""
    if raw[128:132] != b"DICM":
        return 0
    # (0002,0000) group length UL: tag(4) VR(2) len(2) value(4)
    length = struct.unpack("<I", raw[140:144])[0]
    return 144 + length


# -- other formats --------------------------------------------------------------------------------


def _map_float(pixels: np.ndarray, path: str | Path) -> np.ndarray:
    if not np.isfinite(pixels).all():
        raise UnsupportedImage(f"{path}: floating-point image with NaN or infinite values; convert it to integers")
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(pixels.astype(np.float64) * 65535.0).astype(np.uint16)
    if lo >= 0.0 and hi <= 65535.0 and np.array_equal(pixels, np.rint(pixels)):
        return pixels.astype(np.uint16)
    raise UnsupportedImage(f"{path}: floating-point image with values in [{lo:g}, {hi:g}]: neither normalised "
                           "intensities in [0, 1] nor whole numbers in [0, 65535]; convert it to 8- or 16-bit integers")


def _read_pil(fh: IO[bytes], path: str | Path, max_pixels: int | None) -> tuple[np.ndarray, ImageInfo]:
    from PIL import Image

    pil_limit = Image.MAX_IMAGE_PIXELS
    if max_pixels:  # checked from the header already (check_header)
        Image.MAX_IMAGE_PIXELS = None
    try:
        opened = Image.open(fh)  # lazy: only the header is read here
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{path}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    with opened as img:
        mode = img.mode
        if mode.startswith("I;16"):
            pixels, bits = np.asarray(img, dtype=np.uint16), 16
        elif mode in ("I", "F"):
            raw = np.asarray(img)
            if mode == "F":
                pixels = _map_float(raw, path)
            elif raw.size and (raw.min() < 0 or raw.max() > 65535):
                raise UnsupportedImage(f"{path}: 32-bit integer image with values in [{raw.min()}, {raw.max()}] "
                                       "outside [0, 65535]; convert it to 16-bit")
            else:
                pixels = raw.astype(np.uint16)
            bits = 16
        else:
            pixels, bits = np.asarray(img.convert("L")), 8
    return pixels, ImageInfo(rows=pixels.shape[0], cols=pixels.shape[1], bits_stored=bits, photometric="MONOCHROME2")


def _read_ljpeg(fh: IO[bytes], path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    data = fh.read()
    try:
        from libjpeg import decode

        pixels = np.asarray(decode(data))
    except Exception as exc:
        raise UnsupportedImage(f"{path}: cannot decode this DDSM .LJPEG stream ({type(exc).__name__}: {exc}); "
                               f"{LJPEG_HELP}") from exc
    if pixels.ndim != 2:
        raise UnsupportedImage(f"{path}: decoded shape {pixels.shape}, expected one grey plane; {LJPEG_HELP}")
    bits = 8 if pixels.dtype.itemsize == 1 else 16
    return pixels, ImageInfo(rows=pixels.shape[0], cols=pixels.shape[1], bits_stored=bits, photometric="MONOCHROME2")


def read_image(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Read a DICOM (``.dcm`` or the DICM preamble), DDSM ``.LJPEG`` or PNG/TIFF/JPEG as stored.

    ``path`` is a local path or a ``gs://bucket/object`` URI (pass URIs as ``str``: ``Path`` would fold
    the ``//``). ``max_pixels`` (0 / None = no budget) is checked from the header before decoding.
    """
    header = check_header(path, max_pixels)
    with open_binary(path) as fh:
        head = fh.read(132)
        fh.seek(0)
        if is_dicom(str(path), head):
            return _read_dicom_fh(fh, path, max_pixels, header.transfer_syntax if header else "")
        if str(path).lower().endswith(LJPEG_SUFFIXES):
            return _read_ljpeg(fh, path)
        return _read_pil(fh, path, max_pixels)
