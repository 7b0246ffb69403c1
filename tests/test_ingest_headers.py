"""The one header reader (components/headers.py): typed technical values, bounded, pixels never read."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from mammo.components.headers import HeaderError, read_header

sys.path.insert(0, str(Path(__file__).parent / "hostile"))
from ingest_inputs import deflated_bomb, large_private_element_dicom  # noqa: E402


def _dicom(path: Path, **attrs) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.Manufacturer = "MG", "ACME"
    ds.PatientName = "SECRET^NAME"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.Rows, ds.Columns = 40, 30
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.PixelData = np.zeros((40, 30), np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_header_is_typed_and_technical(tmp_path):
    h = read_header(_dicom(tmp_path / "a.dcm", ImagerPixelSpacing=[0.07, 0.07]))
    assert (h.rows, h.cols, h.bits_stored, h.bits_allocated, h.pixel_representation) == (40, 30, 12, 16, 1)
    assert (h.photometric, h.image_format, h.modality, h.manufacturer) == ("MONOCHROME1", "dicom", "MG", "ACME")
    assert (h.pixel_spacing_mm, h.spacing_source) == (0.07, "ImagerPixelSpacing")
    assert (h.study_uid, h.series_uid, h.transfer_syntax) == ("1.2.3.4", "1.2.3.4.5", "1.2.840.10008.1.2.1")
    assert "SECRET" not in repr(h)


def test_pixel_spacing_wins_over_imager_pixel_spacing_and_bytes_work(tmp_path):
    path = _dicom(tmp_path / "b.dcm", PixelSpacing=[0.1, 0.1], ImagerPixelSpacing=[0.07, 0.07])
    h = read_header(path.read_bytes(), name="b.dcm")
    assert (h.pixel_spacing_mm, h.spacing_source) == (0.1, "PixelSpacing")


def test_real_rle_dicom_header_without_decoding(real_csv_dir):
    folder = real_csv_dir.parent / "real" / "cbis-ddsm-dicom"
    if not folder.is_dir():
        pytest.skip(f"real CBIS-DDSM DICOMs not found in {folder}")
    h = read_header(str(folder / "sfm-malign-0" / "1-280.dcm"))
    assert (h.rows, h.cols, h.bits_stored, h.transfer_syntax) == (4736, 2624, 16, "1.2.840.10008.1.2.5")
    assert h.pixel_spacing_mm is None and h.series_uid.startswith("1.3.6.1.4.1.9590.100.1.2.")


@pytest.mark.parametrize("mode,bits", [("I;16", 16), ("L", 8)])
def test_png_header(tmp_path, mode, bits):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 10), np.uint16 if bits == 16 else np.uint8)).save(path)
    h = read_header(str(path))
    assert (h.rows, h.cols, h.bits_stored, h.image_format) == (20, 10, bits, "png")


def test_deflated_dataset_is_inflated_only_up_to_the_byte_bound(tmp_path):
    bomb = deflated_bomb(tmp_path / "bomb.dcm", rows=4096, cols=4096)
    h = read_header(str(bomb), max_bytes=64 * 1024)
    assert (h.rows, h.cols, h.transfer_syntax) == (4096, 4096, "1.2.840.10008.1.2.1.99")


def test_large_elements_are_skipped_not_read(tmp_path):
    path = large_private_element_dicom(tmp_path / "big.dcm", 3_000_000)
    assert read_header(str(path), max_bytes=64 * 1024).rows == 64


def test_a_header_beyond_the_byte_bound_is_refused(tmp_path):
    path = _dicom(tmp_path / "c.dcm")
    ds = pydicom.dcmread(path)
    for i in range(20):  # 200 KB of text before the image module
        ds.add_new(0x00191000 + i, "LT", "x" * 10_000)
    ds.save_as(path)
    with pytest.raises(HeaderError) as err:
        read_header(str(path), max_bytes=8 * 1024)
    assert err.value.reason == "header_too_large"


@pytest.mark.parametrize("content,reason", [(b"", "empty_file"), (b"hello, I am text\n", "not_an_image")])
def test_empty_and_text_files_named_png_get_their_own_reason(tmp_path, content, reason):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(HeaderError) as err:
        read_header(str(path))
    assert err.value.reason == reason and "x.png" in err.value.message


def test_a_dcm_that_is_not_dicom_is_unreadable_dicom_and_the_message_quotes_nothing(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"PATIENT SECRET VALUE " * 20)
    with pytest.raises(HeaderError) as err:
        read_header(str(path))
    assert err.value.reason == "unreadable_dicom" and "SECRET" not in err.value.message


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    with pytest.raises(HeaderError) as err:
        read_header(str(fifo))
    assert err.value.reason == "not_a_regular_file"


def test_the_byte_bound_holds_for_any_stream():
    data = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(data, format="PNG")
    assert read_header(data.getvalue(), name="y.png", max_bytes=4096).rows == 8


def _sof3_stream(rows: int, cols: int, bits: int) -> bytes:
    """The marker segments of a lossless JPEG up to its frame header (what ingest reads of a .LJPEG)."""
    app = b"\xff\xe0" + (16).to_bytes(2, "big") + b"JFIF\0" + bytes(9)
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([bits]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    return b"\xff\xd8" + app + sof + b"\x01\x01\x11\x00"


def test_ddsm_ljpeg_size_and_precision_come_from_its_frame_header():
    h = read_header(_sof3_stream(4696, 3024, 12), name="A_0200_1.LEFT_CC.LJPEG")
    assert (h.rows, h.cols, h.bits_stored, h.image_format) == (4696, 3024, 12, "ljpeg")
    with pytest.raises(HeaderError) as err:
        read_header(b"raw bytes", name="A_0200_1.LEFT_CC.LJPEG")
    assert err.value.reason == "not_an_image"


def test_a_slow_source_is_abandoned_after_the_time_bound(monkeypatch, tmp_path):
    import contextlib
    import time

    from mammo.components import storage

    class Slow(io.BytesIO):
        def read(self, n=-1):
            time.sleep(0.2)
            return super().read(min(n, 16) if n and n > 0 else 16)

    path = _dicom(tmp_path / "slow.dcm")
    monkeypatch.setattr(storage, "open_read",
                        lambda uri, size=None, block=0: contextlib.nullcontext(Slow(Path(uri).read_bytes())))
    started = time.monotonic()
    with pytest.raises(HeaderError) as err:
        read_header(str(path), timeout_s=0.5)
    assert err.value.reason == "header_timeout" and time.monotonic() - started < 3
