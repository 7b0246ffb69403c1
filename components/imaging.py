"""Image helpers shared by the steps: the stored -> 8-bit intensity mapping, resampling, PNG bytes.

Intensity mapping (documented contract, used for every patch and every prediction input):

* The stored value range ``[0, 2**BitsStored - 1]`` maps linearly onto ``[0, 255]``
  (``uint8 = round(value * 255 / (2**bits - 1))``). A fixed, per-bit-depth mapping keeps intensity
  comparable across images: in mammography brightness is diagnostic (calcifications are the
  brightest structures), so no per-image contrast stretch is applied.
* ``MONOCHROME1`` images (0 = white) are inverted first, so bright always means dense tissue.
* Signed samples (DICOM ``PixelRepresentation`` 1) are offset by ``2**(bits - 1)`` first, so the
  stored range ``[-2**(bits-1), 2**(bits-1) - 1]`` maps onto ``[0, 255]`` like an unsigned one.
* The bit depth is the file's (:func:`resolve_bits`): an 8-bit file is 8-bit whatever its metadata
  says; metadata (a normals manifest, a DDSM ``.ics``) may lower a 16-bit container's depth (12-bit
  data in 16-bit PNGs) only when every value fits the lower depth.
* 8-bit inputs pass through unchanged; 16-bit PNG/TIFF without a known bit depth use 16 bits.
* Values above ``2**BitsStored - 1`` (stray high bits) clip to 255 (to 0 for ``MONOCHROME1``).
  Example, 12 bits: 0 -> 0, 2048 -> 128, 4095 -> 255; MONOCHROME1 12 bits: 0 -> 255, 4095 -> 0.

File decoding (DICOM codecs, PNG / TIFF / JPEG, DDSM ``.LJPEG``, the pixel budget) is in
:mod:`mammo.components.decoders`; its readers are re-exported here.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

# file decoding lives in decoders; re-exported here for the steps that read images
from mammo.components.decoders import (  # noqa: F401
    TECHNICAL_TAGS, ImageInfo, ImageTooLarge, UnsupportedImage, dicom_info, read_dicom, read_image,
)


def resolve_bits(pixels: np.ndarray, file_bits: int, metadata_bits: int | None = None) -> int:
    """The bit depth to map ``pixels`` with: the file's, lowered to ``metadata_bits`` only if every value fits.

    An 8-bit file stays 8-bit when metadata claims 12 (it would otherwise map to near-black); a 16-bit
    container holding 12-bit data (metadata 12, maximum below 4096) maps as 12-bit; metadata that the
    values contradict (12 claimed, 5000 stored) loses to the file.
    """
    bits = 8 if pixels.dtype.itemsize == 1 else int(file_bits)
    if metadata_bits and 8 <= int(metadata_bits) < bits and pixels.size:
        if int(pixels.max()) < 2 ** int(metadata_bits):
            return int(metadata_bits)
    return bits


def to_uint8(pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2", signed: bool = False) -> np.ndarray:
    """Map stored values to 8 bits (see module docstring); MONOCHROME1 is inverted, signed data offset.

    Unsigned 16-bit (and 8-bit) inputs go through a 65536-entry lookup table built with the very
    same formula, so the result is identical to the float path below, faster and without its three
    full-size float32 temporaries.
    """
    if signed:
        offset = 2 ** (int(bits_stored) - 1)
        pixels = np.clip(np.add(pixels, offset, dtype=np.int32), 0, 2 ** int(bits_stored) - 1).astype(np.uint16)
    if pixels.dtype == np.uint8 and bits_stored <= 8:
        out = pixels.copy()
        return 255 - out if photometric == "MONOCHROME1" else out
    if pixels.dtype in (np.uint8, np.uint16) and int(bits_stored) <= 16:
        return np.take(_uint8_lut(int(bits_stored), photometric == "MONOCHROME1"), pixels)
    return _to_uint8_float(pixels, bits_stored, photometric == "MONOCHROME1")


def _to_uint8_float(pixels: np.ndarray, bits_stored: int, invert: bool) -> np.ndarray:
    """The mapping itself: clip to ``[0, 2**bits - 1]``, invert if asked, scale to 255, round."""
    max_value = float(2 ** int(bits_stored) - 1)
    values = np.clip(pixels.astype(np.float32), 0.0, max_value)
    if invert:
        values = max_value - values
    return np.rint(values * (255.0 / max_value)).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _uint8_lut(bits_stored: int, invert: bool) -> np.ndarray:
    """The 8-bit value of every uint16 input (values above the bit depth clip to the maximum)."""
    lut = _to_uint8_float(np.arange(65536, dtype=np.uint16), bits_stored, invert)
    lut.flags.writeable = False
    return lut


def read_image_uint8(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Any supported image file as an 8-bit grayscale array, with the documented mapping."""
    pixels, info = read_image(path, max_pixels)
    return to_uint8(pixels, info.bits_stored, info.photometric, info.signed)


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
