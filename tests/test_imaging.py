"""The shared image helpers: the documented 8-bit mapping (fixed per bit depth, MONOCHROME1 inverted),
DICOM / PNG reading, anti-aliased resampling and PNG round trips."""

import datetime as dt

import numpy as np
import pydicom
import pytest

from mammo.components.imaging import (
    _to_uint8_float, decode_png, dicom_info, encode_png, read_dicom, read_image, read_image_uint8, resize_uint8,
    to_uint8,
)
from mammo.components.synth.logic import DicomHeader, write_dicom


def test_12_bit_values_map_linearly_onto_0_255():
    values = np.array([0, 1, 2048, 4095, 4096, 65535], dtype=np.uint16)
    # round(v * 255 / 4095); values above 4095 (stray high bits) clip to 255
    assert to_uint8(values, 12).tolist() == [0, 0, 128, 255, 255, 255]


def test_16_bit_values_map_linearly_onto_0_255():
    values = np.array([0, 128, 129, 257, 32768, 65535], dtype=np.uint16)
    assert to_uint8(values, 16).tolist() == [0, 0, 1, 1, 128, 255]


def test_monochrome1_is_inverted_so_bright_means_dense():
    values = np.array([0, 2048, 4095, 5000], dtype=np.uint16)
    assert to_uint8(values, 12, "MONOCHROME1").tolist() == [255, 127, 0, 0]
    eight = np.array([0, 10, 255], dtype=np.uint8)
    assert to_uint8(eight, 8, "MONOCHROME1").tolist() == [255, 245, 0]
    assert to_uint8(eight, 8).tolist() == [0, 10, 255]


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 15, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lookup_table_path_equals_the_formula(bits, photometric):
    values = np.random.default_rng(bits).integers(0, 65536, size=(64, 48), dtype=np.uint16)
    expected = _to_uint8_float(values, bits, photometric == "MONOCHROME1")
    np.testing.assert_array_equal(to_uint8(values, bits, photometric), expected)


def test_signed_pixels_clip_negative_values_to_black():
    values = np.array([-100, 0, 4095], dtype=np.int16)
    assert to_uint8(values, 12).tolist() == [0, 0, 255]


def _write(path, pixels, bits, photometric="MONOCHROME2"):
    hdr = DicomHeader(patient_id="N_00001", patient_name="SYNTH^SECRET", birth_date="19500101", study_uid="1.2.3.1",
                      series_uid="1.2.3.2", sop_uid="1.2.3.3", date=dt.date(2000, 1, 1), time="101010",
                      accession="12345678", series_description="LEFT CC", instance_number=1, laterality="L",
                      view="CC", manufacturer="HOWTEK", bits_stored=bits)
    write_dicom(path, pixels, hdr)
    if photometric != "MONOCHROME2":
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = photometric
        ds.save_as(path)
    return path


def test_12_bit_monochrome1_dicom_reads_inverted(tmp_path):
    pixels = np.array([[0, 1000], [2048, 4095]], dtype=np.uint16)
    path = _write(tmp_path / "m1.dcm", pixels, 12, "MONOCHROME1")
    stored, info = read_dicom(path)
    np.testing.assert_array_equal(stored, pixels)
    assert (info.bits_stored, info.photometric, info.manufacturer) == (12, "MONOCHROME1", "HOWTEK")
    assert read_image_uint8(path).tolist() == [[255, 193], [127, 0]]


def test_dicom_info_returns_technical_values_only(tmp_path):
    path = _write(tmp_path / "a.dcm", np.zeros((6, 4), np.uint16), 16)
    info = dicom_info(path)
    assert (info.rows, info.cols, info.bits_stored, info.photometric) == (6, 4, 16, "MONOCHROME2")
    assert "SECRET" not in repr(info) and "19500101" not in repr(info) and "12345678" not in repr(info)


def test_16_bit_png_reads_as_16_bit_and_8_bit_png_passes_through(tmp_path):
    from PIL import Image

    sixteen = np.array([[0, 65535], [257, 32768]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    pixels, info = read_image(tmp_path / "s.png")
    assert pixels.dtype == np.uint16 and info.bits_stored == 16
    assert read_image_uint8(tmp_path / "s.png").tolist() == [[0, 255], [1, 128]]
    eight = np.array([[3, 200]], dtype=np.uint8)
    (tmp_path / "e.png").write_bytes(encode_png(eight))
    assert read_image_uint8(tmp_path / "e.png").tolist() == [[3, 200]]


def test_resize_anti_aliases_fine_detail():
    checker = (np.indices((400, 400)).sum(axis=0) % 2 * 255).astype(np.uint8)  # 1-px checkerboard
    small = resize_uint8(checker, 100)
    assert small.shape == (100, 100)
    # averaged to mid-grey, not aliased into stripes or a solid colour as point sampling would be
    assert abs(float(small.mean()) - 127.5) < 3 and float(small.std()) < 5


def test_png_round_trip_is_lossless():
    image = np.random.default_rng(0).integers(0, 256, size=(31, 17), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)


def test_images_on_gcs_read_like_local_files(tmp_path, gcs_client, gcs_bucket):
    from PIL import Image

    from gcs_emulator import upload_dir

    _write(tmp_path / "m1.dcm", np.array([[0, 1000], [2048, 4095]], dtype=np.uint16), 12, "MONOCHROME1")
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "s.png")
    root = upload_dir(gcs_client, tmp_path, gcs_bucket, "cbis")
    assert dicom_info(f"{root}/m1.dcm") == dicom_info(tmp_path / "m1.dcm")
    assert read_image_uint8(f"{root}/m1.dcm").tolist() == [[255, 193], [127, 0]]
    pixels, info = read_image(f"{root}/s.png")
    assert pixels.tolist() == [[0, 65535]] and info.bits_stored == 16
