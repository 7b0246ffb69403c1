"""What bad input gets in extract_patches: images that declare more pixels than the budget (refused from
the header, before decoding, naming the file), a deflated DICOM that inflates past the budget, a ROI mask
with two separate blobs (used whole, warned about and recorded), and float TIFF normals (mapped when they
hold normalised or whole-number intensities, refused with the reason otherwise, never clipped)."""

import logging
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from mammo.components.config import Config, PatchConfig
from mammo.components.decoders import ImageTooLarge, UnsupportedImage, read_image
from mammo.components.extract_patches.logic import run

PATCHES = PatchConfig(image_size=32, min_crop_mm=1.2, normal_crop_mm=2.4, max_pixels=4_000_000)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (16-bit grey) followed by a tiny IDAT: what a
    248 KB file declaring 16000 x 16000 looks like to a reader that trusts the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
                     + chunk(b"IEND", b""))
    return path


def _dicom(path: Path, pixels: np.ndarray, syntax=ExplicitVRLittleEndian, rows=None, cols=None, extra=b"",
           extra_tag=0x00091010) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, "MG"
    ds.Rows, ds.Columns = rows or pixels.shape[0], cols or pixels.shape[1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if extra:
        ds.add_new(extra_tag, "OB", extra)  # a private blob (compresses to almost nothing)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _breast(shape=(400, 300)) -> np.ndarray:
    img = np.full(shape, 100, np.uint16)
    img[20:-20, : shape[1] * 2 // 3] = 3000  # tissue at the chest wall
    return img


def _case(case_id, label, image_uri, roi_mask_uri=None, **extra) -> dict:
    index = ["calc_benign", "calc_malignant", "mass_benign", "mass_malignant", "normal"].index(label)
    return {"case_id": case_id, "patient_id": case_id.split("-")[0], "label": label, "label_index": index,
            "split": "train", "subset": "train", "source": "cbis-ddsm" if label != "normal" else "ddsm-normal",
            "scanner": "", "abnormality_type": None, "view": "CC", "breast_density": 2, "image_uri": str(image_uri),
            "roi_mask_uri": str(roi_mask_uri) if roi_mask_uri else None, "cropped_uri": "", "bits_stored": 12,
            "pixel_spacing_mm": None, "pixel_spacing_source": None, **extra}


def _run(tmp_path, rows, patches=PATCHES):
    (tmp_path / "in").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "in" / "cases.parquet")
    report = run(tmp_path / "in", tmp_path / "out", Config(patches=patches), workers=1, progress=False)
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet").set_index("case_id")
    return report, manifest, rejects


def test_oversized_headers_are_refused_before_decoding_naming_the_file(tmp_path):
    png = _png_header_only(tmp_path / "huge.png", 16000, 16000)
    assert png.stat().st_size < 10_000
    dcm = _dicom(tmp_path / "huge.dcm", np.zeros((4, 4)), rows=20000, cols=20000)  # header lies about its size
    mass_mask = _dicom(tmp_path / "mask.dcm", np.zeros((4, 4)))
    start = time.time()
    report, manifest, rejects = _run(tmp_path, [_case("P1-n", "normal", png),
                                                _case("P2-m", "mass_benign", dcm, mass_mask)])
    assert time.time() - start < 30 and manifest.empty
    assert rejects.loc["P1-n", "reason"] == "image_too_large" and "huge.png" in rejects.loc["P1-n", "message"]
    assert "16000x16000" in rejects.loc["P1-n", "message"] and "patches.max_pixels" in rejects.loc["P1-n", "message"]
    assert rejects.loc["P2-m", "reason"] == "image_too_large" and "huge.dcm" in rejects.loc["P2-m", "message"]
    assert report.reject_reasons == {"image_too_large": 2}


def test_a_deflated_dicom_bomb_is_refused_without_inflating_it_whole(tmp_path):
    # 64 MiB of zeros, a few tens of KB on disk: before the image module the header reader gives up on
    # it; after the pixel data (a header that passes the budget) the bounded inflation refuses it
    early = _dicom(tmp_path / "early.dcm", np.zeros((10, 10)), syntax=DeflatedExplicitVRLittleEndian,
                   extra=b"\0" * (64 << 20))
    late = _dicom(tmp_path / "late.dcm", np.zeros((10, 10)), syntax=DeflatedExplicitVRLittleEndian,
                  extra=b"\0" * (64 << 20), extra_tag=0x7FE11010)
    assert early.stat().st_size < 1 << 20 and late.stat().st_size < 1 << 20
    with pytest.raises(UnsupportedImage, match=r"early\.dcm"):
        read_image(early, max_pixels=10_000)
    with pytest.raises(ImageTooLarge, match=r"late\.dcm.*deflated DICOM inflates to more than"):
        read_image(late, max_pixels=10_000)
    small = _dicom(tmp_path / "small.dcm", np.arange(100).reshape(10, 10), syntax=DeflatedExplicitVRLittleEndian)
    assert read_image(small, max_pixels=10_000)[0].tolist() == np.arange(100).reshape(10, 10).tolist()


def test_a_two_blob_mask_is_used_whole_but_warned_about_and_recorded(tmp_path, caplog):
    image = _dicom(tmp_path / "img.dcm", _breast())
    mask = np.zeros((400, 300), np.uint16)
    mask[100:130, 60:90] = 1
    mask[250:280, 120:150] = 1  # a second, separate lesion outline in the same mask
    single = np.zeros_like(mask)
    single[100:130, 60:90] = 1
    rows = [_case("P1-two", "mass_malignant", image, _dicom(tmp_path / "two.dcm", mask)),
            _case("P1-one", "mass_benign", image, _dicom(tmp_path / "one.dcm", single))]
    with caplog.at_level(logging.WARNING):
        report, manifest, _ = _run(tmp_path, rows)
    m = manifest.set_index("case_id")
    assert (m.loc["P1-two", "mask_blobs"], m.loc["P1-one", "mask_blobs"]) == (2, 1)
    assert report.multi_blob_masks == 1
    assert any("P1-two" in r.getMessage() and "2 separate regions" in r.getMessage() for r in caplog.records)


def test_float_tiff_normals_are_mapped_or_refused_with_the_reason(tmp_path):
    from PIL import Image

    unit = np.where(_breast() > 1000, 0.8, 0.02).astype(np.float32)  # normalised intensities
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    wild = unit * 1000.5 - 7  # negative and fractional: no honest 8-bit mapping
    Image.fromarray(wild.astype(np.float32)).save(tmp_path / "wild.tif")
    report, manifest, rejects = _run(tmp_path, [_case("N1-a", "normal", tmp_path / "unit.tif"),
                                                _case("N2-b", "normal", tmp_path / "wild.tif")],
                                     PatchConfig(**{**PATCHES.__dict__, "protocol": "paper"}))
    assert set(manifest["case_id"]) == {"N1-a"} and set(manifest["bits_stored"]) == {16}
    assert rejects.loc["N2-b", "reason"] == "unsupported_image"
    assert "wild.tif" in rejects.loc["N2-b", "message"] and "convert it" in rejects.loc["N2-b", "message"]
