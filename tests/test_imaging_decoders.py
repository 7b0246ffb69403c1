"""File decoding (mammo.components.decoders): the real RLE CBIS-DDSM DICOMs, the same pixels re-encoded
as JPEG lossless, JPEG-LS and JPEG 2000, signed samples, the file's real bit depth, float images, DDSM
.LJPEG streams, and the pixel budget checked before decoding."""


import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless,
)

from shared_data import REAL_DIR
from mammo.components.decoders import ImageTooLarge, UnsupportedImage, read_image
from mammo.components.imaging import read_image_uint8, resolve_bits, to_uint8

REAL = REAL_DIR / "cbis-ddsm-dicom"


def _real():
    if not (REAL / "labels.csv").exists():
        pytest.skip(f"the shared real CBIS-DDSM DICOMs are not at {REAL}")
    return pd.read_csv(REAL / "labels.csv")


def test_real_rle_cbis_ddsm_dicoms_decode_to_their_stated_size():
    labels = _real()
    for row in labels.head(2).itertuples():
        pixels, info = read_image(REAL / row.file)
        assert pixels.shape == (row.rows, row.cols) and pixels.dtype == np.uint16
        assert (info.bits_stored, info.photometric, info.signed) == (16, "MONOCHROME2", False)
        assert info.pixel_spacing_mm is None  # CBIS-DDSM states none: extract uses the per-source default
        image8 = to_uint8(pixels, info.bits_stored)
        assert np.percentile(image8, 99) > 120 and float(image8.mean()) > 10  # a real film: not near-black


def test_pixel_budget_refuses_before_decoding_and_names_the_file():
    labels = _real()
    path = REAL / labels.iloc[0]["file"]
    with pytest.raises(ImageTooLarge, match=r"1-130\.dcm.*4432x2864.*budget of 1,000,000"):
        read_image(path, max_pixels=1_000_000)


def _template(path):
    """A small crop of a real DICOM as a fresh uncompressed dataset (fast to re-encode)."""
    ds = pydicom.dcmread(path)
    pixels = np.ascontiguousarray(ds.pixel_array[2000:2256, 1000:1192])
    ds.PixelData = pixels.tobytes()
    ds.Rows, ds.Columns = pixels.shape
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds, pixels


def _encapsulated(ds, frame: bytes, syntax, path):
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000", "jpegls", "jpeg_lossless"])
def test_real_pixels_reencoded_with_each_hospital_codec_decode_losslessly(syntax, tmp_path):
    import imagecodecs

    labels = _real()
    ds, pixels = _template(REAL / labels.iloc[4]["file"])
    path = tmp_path / f"{syntax}.dcm"
    if syntax == "rle":
        ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
    elif syntax == "jpeg2000":
        ds.compress(JPEG2000Lossless)
        ds.save_as(path, enforce_file_format=True)
    elif syntax == "jpegls":
        _encapsulated(ds, imagecodecs.jpegls_encode(pixels, level=0), JPEGLSLossless, path)
    else:
        _encapsulated(ds, imagecodecs.ljpeg_encode(pixels), JPEGLosslessSV1, path)
    assert str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) != "1.2.840.10008.1.2.1"
    decoded, info = read_image(path, max_pixels=10**6)
    np.testing.assert_array_equal(decoded, pixels)
    assert info.bits_stored == 16


def test_signed_samples_are_offset_not_clipped_to_black(tmp_path):
    ds, _ = _template(REAL / _real().iloc[0]["file"])
    signed = np.array([[-2048, -1000], [0, 2047]], dtype=np.int16)
    ds.Rows, ds.Columns = signed.shape
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.PixelData = signed.tobytes()
    ds.save_as(tmp_path / "s.dcm", enforce_file_format=True)
    pixels, info = read_image(tmp_path / "s.dcm")
    assert info.signed and pixels.dtype == np.int16 and pixels.tolist() == signed.tolist()
    # [-2048, 2047] maps onto [0, 255] like an unsigned 12-bit range
    assert read_image_uint8(tmp_path / "s.dcm").tolist() == [[0, 65], [128, 255]]
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm", enforce_file_format=True)
    assert read_image_uint8(tmp_path / "m1.dcm").tolist() == [[255, 190], [127, 0]]


def test_the_files_bit_depth_wins_over_contradicting_metadata(tmp_path):
    from PIL import Image

    eight = np.array([[10, 200]], dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "e.png")
    pixels, info = read_image(tmp_path / "e.png")
    bits = resolve_bits(pixels, info.bits_stored, metadata_bits=12)  # a manifest / .ics claiming 12 bits
    assert bits == 8 and to_uint8(pixels, bits).tolist() == [[10, 200]]  # not near-black
    twelve = np.array([[0, 2048, 4095]], dtype=np.uint16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(twelve).save(tmp_path / "t.png")
    pixels, info = read_image(tmp_path / "t.png")
    assert info.bits_stored == 16 and resolve_bits(pixels, 16, 12) == 12
    assert to_uint8(pixels, resolve_bits(pixels, 16, 12)).tolist() == [[0, 128, 255]]
    assert resolve_bits(np.array([[5000]], np.uint16), 16, 12) == 16  # values contradict the metadata
    assert resolve_bits(np.array([[5]], np.uint16), 12, 16) == 12  # metadata never raises the depth


def test_float_tiffs_are_mapped_or_refused_never_clipped(tmp_path):
    from PIL import Image

    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    pixels, info = read_image(tmp_path / "unit.tif")
    assert pixels.dtype == np.uint16 and pixels.tolist() == [[0, 32768, 65535]] and info.bits_stored == 16
    Image.fromarray(np.array([[0.0, 4095.0]], dtype=np.float32)).save(tmp_path / "whole.tif")
    assert read_image(tmp_path / "whole.tif")[0].tolist() == [[0, 4095]]
    Image.fromarray(np.array([[-3.5, 700.25]], dtype=np.float32)).save(tmp_path / "bad.tif")
    with pytest.raises(UnsupportedImage, match=r"bad\.tif.*\[-3\.5, 700\.25\].*convert"):
        read_image(tmp_path / "bad.tif")


def test_ddsm_ljpeg_streams_decode_and_bad_ones_say_how_to_convert(tmp_path):
    import imagecodecs

    pixels = np.random.default_rng(0).integers(0, 4096, size=(64, 40)).astype(np.uint16)
    (tmp_path / "A_0001_1.LEFT_CC.LJPEG").write_bytes(imagecodecs.ljpeg_encode(pixels))
    decoded, info = read_image(tmp_path / "A_0001_1.LEFT_CC.LJPEG")
    np.testing.assert_array_equal(decoded, pixels)
    assert (info.rows, info.cols) == (64, 40)
    (tmp_path / "broken.LJPEG").write_bytes(b"\xff\xd8" + b"\x00" * 64)
    with pytest.raises(UnsupportedImage, match=r"broken\.LJPEG.*convert it to a 16-bit PNG or DICOM"):
        read_image(tmp_path / "broken.LJPEG")
