"""One reader of image headers (DICOM, PNG, JPEG, TIFF, DDSM LJPEG), bounded in bytes and time, pixels never read.

Ingest resolves and describes every image from its header alone; other steps use the same reader
for a size check before any decode. :func:`read_header` takes a local path, a ``gs://`` URI (read
lazily in small ranged requests through :mod:`mammo.components.storage`) or the file's bytes, and
returns a typed :class:`Header` of technical values only; the Study / Series UIDs are there for
path resolution and must never leave the step that reads them.

Bounds, for every transfer syntax: at most ``max_bytes`` are read from the file and the read is
abandoned after ``timeout_s``. The DICOM dataset is parsed only up to group 0028 (the image pixel
module), so pixel data is never reached. A *Deflated* dataset (1.2.840.10008.1.2.1.99) is inflated
incrementally with the output capped at ``max_bytes``, so a small file that inflates to gigabytes
costs no more than any other header. Failures raise :class:`HeaderError` with a reason code; its
message never quotes file content.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

#: the most bytes read from one file for its header (a CBIS-DDSM DICOM header is ~2 KB)
HEADER_MAX_BYTES = 1024 * 1024
#: give up on one header after this many seconds
HEADER_TIMEOUT_S = 20.0
#: block of the first ranged read on GCS (a DICOM, PNG or JPEG header fits in it)
HEADER_BLOCK = 16 * 1024

DICOM_SUFFIXES = (".dcm", ".dicom")
#: DDSM's lossless JPEG files (decoded by mammo.components.decoders; here only their frame header)
LJPEG_SUFFIXES = (".ljpeg", ".ljpg")
DEFLATED = "1.2.840.10008.1.2.1.99"

# reason codes of HeaderError (ingest turns them into reject reasons)
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNREADABLE_DICOM = "unreadable_dicom"
HEADER_TOO_LARGE = "header_too_large"
HEADER_TIMEOUT = "header_timeout"
NOT_A_REGULAR_FILE = "not_a_regular_file"


class HeaderError(ValueError):
    """A header could not be read; ``reason`` is a code, the message names no file content."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Header:
    """Technical header values of one image. ``study_uid`` / ``series_uid`` are for resolution only."""

    rows: int
    cols: int
    bits_stored: int
    photometric: str
    image_format: str  # dicom | png | jpeg | tiff
    bits_allocated: int = 0
    pixel_representation: int = 0  # 1: signed
    samples_per_pixel: int = 1
    frames: int = 1
    transfer_syntax: str = ""
    modality: str = ""
    manufacturer: str = ""
    pixel_spacing_mm: float | None = None
    #: the attribute the spacing came from: PixelSpacing / ImagerPixelSpacing ("" if none)
    spacing_source: str = ""
    study_uid: str = ""
    series_uid: str = ""


class _Bounded(io.RawIOBase):
    """A read-only view of a seekable stream that refuses to read past ``max_bytes`` or ``deadline``."""

    def __init__(self, fh: IO[bytes], max_bytes: int, deadline: float, what: str):
        super().__init__()
        self._fh, self._max, self._deadline, self._what = fh, max_bytes, deadline, what
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if time.monotonic() > self._deadline:
            raise HeaderError(HEADER_TIMEOUT, f"{self._what}: header not read within the time limit")
        n = len(buffer)
        if self.bytes_read + n > self._max:
            n = self._max - self.bytes_read
            if n <= 0:
                raise HeaderError(HEADER_TOO_LARGE, f"{self._what}: header larger than {self._max} bytes")
        data = self._fh.read(n)
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)


def is_dicom(name: str, head: bytes) -> bool:
    """A DICOM file by its name (``.dcm``, ``.dicom``) or its ``DICM`` preamble (``head``: the first 132 bytes)."""
    return name.lower().endswith(DICOM_SUFFIXES) or (len(head) >= 132 and head[128:132] == b"DICM")


def dicom_spacing(ds: Any) -> tuple[float | None, str]:
    """(row spacing in mm, the attribute it came from) of a DICOM dataset: ``PixelSpacing``, else
    ``ImagerPixelSpacing``, each only when in (0, 10) mm; ``(None, "")`` when neither is usable."""
    for attr in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(attr)
        try:
            v = float(value[0]) if value is not None and len(value) else None
        except (TypeError, ValueError, IndexError):
            v = None
        if v and 0 < v < 10:
            return v, attr
    return None, ""


def _int(ds: Any, attr: str, default: int = 0) -> int:
    try:
        value = ds.get(attr)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _stop_after_image_module(tag, vr, length) -> bool:
    """Stop parsing at the first element after group 0028: nothing needed lies beyond it."""
    return tag.group > 0x0028


def _dicom_header(fh: IO[bytes], what: str, max_bytes: int) -> Header:
    from pydicom.filereader import read_dataset, read_preamble
    from pydicom.uid import UID

    try:
        read_preamble(fh, False)
        meta = read_dataset(fh, is_implicit_VR=False, is_little_endian=True, stop_when=lambda t, v, n: t.group != 2)
    except HeaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; their text may quote content
        raise HeaderError(UNREADABLE_DICOM, f"{what}: not a readable DICOM file ({type(exc).__name__})") from None
    syntax = str(meta.get("TransferSyntaxUID", "") or "")
    if not syntax:
        raise HeaderError(UNREADABLE_DICOM, f"{what}: DICOM file meta names no transfer syntax")
    body: IO[bytes] = fh
    implicit, little = False, True
    if syntax == DEFLATED:
        body = io.BytesIO(_inflate_prefix(fh, max_bytes))
    else:
        uid = UID(syntax)
        if uid.is_transfer_syntax:
            implicit, little = uid.is_implicit_VR, uid.is_little_endian
    try:
        ds = read_dataset(body, is_implicit_VR=implicit, is_little_endian=little,
                          stop_when=_stop_after_image_module, defer_size=4096)
        rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    except HeaderError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise HeaderError(UNREADABLE_DICOM, f"{what}: DICOM dataset not readable ({type(exc).__name__})") from None
    if rows <= 0 or cols <= 0:
        raise HeaderError(UNREADABLE_DICOM, f"{what}: DICOM file has no Rows/Columns (not an image)")
    allocated = _int(ds, "BitsAllocated")
    spacing, source = dicom_spacing(ds)
    return Header(
        rows=rows,
        cols=cols,
        bits_stored=_int(ds, "BitsStored") or allocated or 16,
        bits_allocated=allocated,
        pixel_representation=_int(ds, "PixelRepresentation"),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        frames=_int(ds, "NumberOfFrames", 1),
        photometric=str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip(),
        image_format="dicom",
        transfer_syntax=syntax,
        modality=str(ds.get("Modality", "") or "").strip(),
        manufacturer=str(ds.get("Manufacturer", "") or "").strip(),
        pixel_spacing_mm=spacing,
        spacing_source=source,
        study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
        series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
    )


def _inflate_prefix(fh: IO[bytes], max_bytes: int) -> bytes:
    """The first ``max_bytes`` of a deflated dataset, inflating no more than that (zip-bomb safe)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while len(out) < max_bytes and not inflater.eof:
        chunk = inflater.unconsumed_tail or fh.read(16 * 1024)
        if not chunk:
            break
        try:
            out += inflater.decompress(chunk, max_bytes - len(out))
        except zlib.error:
            raise HeaderError(UNREADABLE_DICOM, "deflated DICOM dataset is not valid deflate data") from None
    return bytes(out)


def _picture_header(fh: IO[bytes], what: str, name: str) -> Header:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(fh) as img:  # reads the header only
            cols, rows = img.size
            mode, fmt = img.mode, (img.format or PurePosixPath(name).suffix.lstrip(".")).lower()
            frames = int(getattr(img, "n_frames", 1) or 1)
    except HeaderError:
        raise
    except UnidentifiedImageError:
        raise HeaderError(NOT_AN_IMAGE, f"{what}: not a DICOM, PNG, JPEG or TIFF image") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types
        raise HeaderError(NOT_AN_IMAGE, f"{what}: image header not readable ({type(exc).__name__})") from None
    bits = 16 if mode.startswith("I") else 32 if mode == "F" else 8
    return Header(rows=int(rows), cols=int(cols), bits_stored=bits, bits_allocated=bits, photometric="MONOCHROME2",
                  image_format={"jpg": "jpeg", "tif": "tiff", "mpo": "jpeg"}.get(fmt, fmt),
                  samples_per_pixel=len(mode) if mode in ("RGB", "RGBA", "LA", "CMYK") else 1, frames=frames)


def _ljpeg_header(fh: IO[bytes], what: str) -> Header:
    """Size and precision from the JPEG frame header (SOFn) of a DDSM ``.LJPEG`` stream."""
    if fh.read(2) != b"\xff\xd8":
        raise HeaderError(NOT_AN_IMAGE, f"{what}: not a JPEG stream (no SOI marker)")
    while True:
        byte = fh.read(1)
        if not byte:
            raise HeaderError(NOT_AN_IMAGE, f"{what}: no JPEG frame header before the end of the file")
        if byte != b"\xff":
            continue
        marker = fh.read(1)
        while marker == b"\xff":
            marker = fh.read(1)
        if not marker or marker in (b"\x00", b"\xd8") or b"\xd0" <= marker <= b"\xd7":
            continue
        length = int.from_bytes(fh.read(2), "big")
        if b"\xc0" <= marker <= b"\xcf" and marker not in (b"\xc4", b"\xc8", b"\xcc"):
            seg = fh.read(6)
            if len(seg) < 6:
                break
            bits, rows, cols, comps = seg[0], int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
            if rows <= 0 or cols <= 0:
                break
            return Header(rows=rows, cols=cols, bits_stored=bits, bits_allocated=16 if bits > 8 else 8,
                          photometric="MONOCHROME2", image_format="ljpeg", samples_per_pixel=comps)
        if length < 2:
            break
        fh.seek(length - 2, io.SEEK_CUR)
    raise HeaderError(NOT_AN_IMAGE, f"{what}: JPEG frame header without a usable size")


def read_header(
    source: str | os.PathLike | bytes,
    *,
    max_bytes: int = HEADER_MAX_BYTES,
    timeout_s: float = HEADER_TIMEOUT_S,
    name: str = "",
    size: int | None = None,
) -> Header:
    """The :class:`Header` of a DICOM (``DICM`` preamble or a ``.dcm`` name) or PNG / JPEG / TIFF.

    ``source`` is a local path, a ``gs://`` URI or the bytes of the file (``name`` then gives its
    name, for the format guess and messages). At most ``max_bytes`` are read and the read stops
    after ``timeout_s`` seconds; local paths that are not regular files (FIFOs, devices) are
    refused without being opened. Raises :class:`HeaderError`.
    """
    from mammo.components import storage

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
        return _read(io.BytesIO(data), name, len(data), max_bytes, timeout_s)
    uri = str(source)
    name = name or uri
    try:
        with storage.open_read(uri, size=size, block=HEADER_BLOCK) as fh:
            if size is None and not storage.is_gcs(uri):
                with contextlib.suppress(OSError, io.UnsupportedOperation, AttributeError):
                    size = os.fstat(fh.fileno()).st_size
            return _read(fh, name, size, max_bytes, timeout_s)
    except storage.NotRegularFile as exc:
        raise HeaderError(NOT_A_REGULAR_FILE, str(exc)) from None


def _read(fh: IO[bytes], name: str, size: int | None, max_bytes: int, timeout_s: float) -> Header:
    what = PurePosixPath(name).name or name
    if size == 0:
        raise HeaderError(EMPTY_FILE, f"{what}: empty file (0 bytes)")
    bounded = io.BufferedReader(_Bounded(fh, max_bytes, time.monotonic() + timeout_s, what), 8192)
    head = bounded.peek(132)[:132]
    if not head:
        raise HeaderError(EMPTY_FILE, f"{what}: empty file (0 bytes)")
    if is_dicom(name, head):
        return _dicom_header(bounded, what, max_bytes)
    if name.lower().endswith(LJPEG_SUFFIXES):
        return _ljpeg_header(bounded, what)
    return _picture_header(bounded, what, name)
