"""Image I/O shared by the steps: DICOM / PNG reading and the 16-bit -> 8-bit intensity mapping.

Intensity mapping (documented contract, used for every patch and every prediction input):

* The stored value range ``[0, 2**BitsStored - 1]`` maps linearly onto ``[0, 255]``
  (``uint8 = round(value * 255 / (2**bits - 1))``). A fixed, per-bit-depth mapping keeps intensity
  comparable across images: in mammography brightness is diagnostic (calcifications are the
  brightest structures), so no per-image contrast stretch is applied.
* ``MONOCHROME1`` images (0 = white) are inverted first, so bright always means dense tissue.
* 8-bit inputs pass through unchanged; 16-bit PNG/TIFF without a known bit depth use 16 bits.

Only technical DICOM attributes are read here (rows, columns, bits, photometric interpretation,
pixel spacing, manufacturer); patient-identifying values are never returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the DICOM attributes ingest may carry out of the step; everything else stays behind
TECHNICAL_TAGS = ("Rows", "Columns", "BitsStored", "PhotometricInterpretation", "PixelSpacing", "Manufacturer")


@dataclass(frozen=True)
class ImageInfo:
    rows: int
    cols: int
    bits_stored: int
    photometric: str
    manufacturer: str = ""


def dicom_info(path: str | Path) -> ImageInfo:
    """Technical header values of a DICOM file, without reading its pixels."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    return ImageInfo(
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        bits_stored=int(getattr(ds, "BitsStored", 16) or 16),
        photometric=str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")),
        manufacturer=str(getattr(ds, "Manufacturer", "") or ""),
    )


def read_dicom(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Pixel array (as stored) and technical info of a DICOM file."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected a single-frame grayscale image, got shape {pixels.shape}")
    info = ImageInfo(
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        bits_stored=int(getattr(ds, "BitsStored", 16) or 16),
        photometric=str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")),
        manufacturer=str(getattr(ds, "Manufacturer", "") or ""),
    )
    return pixels, info


def to_uint8(pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2") -> np.ndarray:
    """Map stored values to 8 bits (see module docstring); MONOCHROME1 is inverted."""
    if pixels.dtype == np.uint8 and bits_stored <= 8:
        out = pixels.copy()
        return 255 - out if photometric == "MONOCHROME1" else out
    max_value = float(2 ** int(bits_stored) - 1)
    values = np.clip(pixels.astype(np.float32), 0.0, max_value)
    if photometric == "MONOCHROME1":
        values = max_value - values
    return np.rint(values * (255.0 / max_value)).astype(np.uint8)


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Read a DICOM (``.dcm``, or any file with the DICM preamble) or PNG/TIFF/JPEG as stored."""
    path = Path(path)
    if _is_dicom(path):
        return read_dicom(path)
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            pixels = np.asarray(img, dtype=np.uint16 if img.mode.startswith("I;16") else np.int32)
            bits = 16
        else:
            pixels = np.asarray(img.convert("L"))
            bits = 8
    if pixels.dtype == np.int32:
        pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
    return pixels, ImageInfo(rows=pixels.shape[0], cols=pixels.shape[1], bits_stored=bits, photometric="MONOCHROME2")


def read_image_uint8(path: str | Path) -> np.ndarray:
    """Any supported image file as an 8-bit grayscale array, with the documented mapping."""
    pixels, info = read_image(path)
    return to_uint8(pixels, info.bits_stored, info.photometric)


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """Square resample to ``size`` with anti-aliasing (PIL's Lanczos filter on 8-bit data)."""
    from PIL import Image

    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def encode_png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"))
