"""Ingest on real CBIS-DDSM files: the official CSV rows of two patients against their 8 real DICOMs.

The DICOMs (RLE Lossless, ~4500x2800, UIDs exactly those of the official CSV paths) are copied into
a tree at test time, in the NBIA layout or under their own names (then resolved by the Study /
Series UIDs in their headers). They come without ROI masks or crops, so every row is rejected as
``missing_file`` unless the test plants a mask and a crop for it; the counts add up either way.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from mammo.components import contracts
from mammo.components.config import Config
from mammo.components.headers import read_header
from mammo.components.ingest.logic import CSV_FILES, run
from mammo.components.ingest.tables import read_case_csv
from mammo.components.synth.logic import DicomHeader, write_dicom

MASS_TEST = "mass_case_description_test_set.csv"
PATIENTS = ("P_00173", "P_00820")
LENIENT = Config().with_overrides({"ingest.max_reject_fraction": 1.0})


@pytest.fixture(scope="module")
def real_dicoms(request) -> Path:
    from conftest import REAL_CSV_DIR

    folder = REAL_CSV_DIR.parent / "real" / "cbis-ddsm-dicom"
    if not (folder / "labels.csv").exists():
        pytest.skip(f"real CBIS-DDSM DICOMs not found in {folder} (the shared data folder is absent)")
    return folder


@pytest.fixture(scope="module")
def official_rows(real_dicoms) -> pd.DataFrame:
    """The official mass test rows of the two patients whose DICOMs are shared."""
    from conftest import REAL_CSV_DIR

    rows = read_case_csv(REAL_CSV_DIR / MASS_TEST)
    return rows[rows["patient_id"].isin(PATIENTS)].reset_index(drop=True)


def _write_csvs(root: Path, rows: pd.DataFrame) -> None:
    from conftest import REAL_CSV_DIR

    root.mkdir(parents=True, exist_ok=True)
    for name in CSV_FILES:  # the others: their real header line only
        header = (REAL_CSV_DIR / name).read_text().splitlines()[0]
        (root / name).write_text(header + "\n")
    rows.to_csv(root / MASS_TEST, index=False)


def _series_dir(csv_path: str, description: str) -> str:
    folder, study, series, _ = PurePosixPath(csv_path).parts
    return f"CBIS-DDSM/{folder}/07-20-2016-DDSM-{study[-5:]}/1.000000-{description}-{series[-5:]}"


def _place_real(real_dicoms: Path, root: Path, rows: pd.DataFrame, layout: str) -> dict[str, Path]:
    """Copy the 8 real files into ``root``; returns {CBIS folder name: copied file}."""
    placed = {}
    for src in sorted(real_dicoms.rglob("*.dcm")):
        folder = str(pydicom.dcmread(src, stop_before_pixels=True, specific_tags=["PatientID"]).PatientID)
        if layout == "nbia":
            path = rows.loc[rows["image file path"].str.startswith(folder + "/"), "image file path"].iloc[0]
            dst = root / _series_dir(path, "full mammogram images") / "1-1.dcm"
        else:  # as shipped: no UID digits in any name, so only the headers can tell
            dst = root / "as-shipped" / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        placed[folder] = dst
    return placed


def _plant_roi(root: Path, row: pd.Series, image_shape: tuple[int, int], layout: str) -> None:
    """A ROI mask (the image's size, a blob) and a crop for one row, with the row's UIDs."""
    mask = np.zeros(image_shape, np.uint8)
    mask[2000:2300, 1200:1500] = 255
    crop = np.full((300, 300), 30000, np.uint16)
    for key, pixels, desc in (("ROI mask file path", mask, "ROI mask images"),
                              ("cropped image file path", crop, "cropped images")):
        folder, study, series, _ = PurePosixPath(row[key]).parts
        hdr = DicomHeader(folder, "REAL^ROI", "19500101", study, series, generate_uid(), dt.date(2016, 7, 20), "101010", "",
                          desc, 1, row["left or right breast"][0], row["image view"])
        dst = (root / _series_dir(row[key], desc) / "1-1.dcm" if layout == "nbia"
               else root / "rois" / f"{desc.replace(' ', '_')}.dcm")
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_dicom(dst, pixels, hdr)


@pytest.mark.parametrize("layout", ["nbia", "as_shipped"])
def test_official_rows_of_the_real_patients_ingest_against_their_real_dicoms(
        real_dicoms, official_rows, tmp_path, layout):
    root = tmp_path / "cbis"
    _write_csvs(root, official_rows)
    placed = _place_real(real_dicoms, root, official_rows, layout)
    malignant = official_rows[(official_rows["patient_id"] == "P_00820")
                              & (official_rows["left or right breast"] == "LEFT")
                              & (official_rows["image view"] == "CC")].iloc[0]
    image = read_header(str(placed["Mass-Test_P_00820_LEFT_CC"]))
    _plant_roi(root, malignant, (image.rows, image.cols), layout)
    normals = tmp_path / "normals"
    normals.mkdir()
    shutil.copyfile(placed["Mass-Test_P_00173_LEFT_CC"], normals / "R_00001_LEFT_CC.dcm")

    report = run(root, normals, tmp_path / "out", LENIENT)

    cases = pd.read_parquet(tmp_path / "out" / contracts.CASES)
    rejects = pd.read_parquet(tmp_path / "out" / contracts.REJECTS)
    c = report.counts[MASS_TEST]
    assert c.read == len(official_rows) == 10 == c.ingested + c.rejected
    assert all(report.counts[n].read == 0 for n in CSV_FILES if n != MASS_TEST)
    (case,) = cases[cases["source"] == "cbis-ddsm"].to_dict("records")
    labels = pd.read_csv(real_dicoms / "labels.csv").set_index("cbis_id")
    truth = labels.loc["Mass-Test_P_00820_LEFT_CC"]
    assert (case["case_id"], case["label"], case["split"]) == ("Mass-Test_P_00820_LEFT_CC_1", "mass_malignant", "test")
    assert (case["image_rows"], case["image_cols"], case["bits_stored"]) == (truth["rows"], truth["cols"], truth["bits"])
    assert (case["modality"], case["image_format"], case["photometric"]) == ("MG", "dicom", "MONOCHROME2")
    assert case["image_uri"] == str(placed["Mass-Test_P_00820_LEFT_CC"])
    assert (case["mask_rows"], case["mask_cols"]) == (case["image_rows"], case["image_cols"])
    # CBIS-DDSM's DICOMs carry no PixelSpacing: the documented per-source default, said so
    assert (case["pixel_spacing_mm"], case["pixel_spacing_source"]) == (0.05, "default:cbis-ddsm")
    mine = rejects[rejects["source_file"] == MASS_TEST]
    assert len(mine) == 9 and set(mine["reason"]) == {"missing_file"}
    assert mine["message"].str.startswith("no files for ROI mask / cropped image path").all()
    expected = "dicom_header" if layout == "as_shipped" else "nbia_names"
    assert report.resolution == {expected: 1}
    assert report.pixel_spacing_sources == {"cbis-ddsm": {"default:cbis-ddsm": 1},
                                            "ddsm-normal": {"default:ddsm-normal": 1}}
    normal = cases[cases["source"] == "ddsm-normal"].iloc[0]
    assert (normal["image_rows"], normal["image_cols"]) == tuple(labels.loc["Mass-Test_P_00173_LEFT_CC", ["rows", "cols"]])


def _phi_of_real_files(real_dicoms: Path) -> list[str]:
    """Identifying header values of the real files (dates, times, instance UIDs, private data)."""
    values: set[str] = set()
    for src in real_dicoms.rglob("*.dcm"):
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        for attr in ("StudyDate", "ContentDate", "StudyTime", "ContentTime", "SOPInstanceUID"):
            if str(ds.get(attr, "") or ""):
                values.add(str(ds.get(attr)))
        private = ds.get((0x0013, 0x1013))
        if private is not None:
            values.add(bytes(private.value).decode("ascii", "ignore").strip())
    values.discard("")
    return sorted(values)


def test_no_phi_of_the_real_files_leaves_the_step(real_dicoms, official_rows, tmp_path, caplog):
    root = tmp_path / "cbis"
    _write_csvs(root, official_rows)
    placed = _place_real(real_dicoms, root, official_rows, "as_shipped")
    normals = tmp_path / "normals"
    normals.mkdir()
    for i, src in enumerate(sorted(placed.values())[:2]):
        shutil.copyfile(src, normals / f"R_{i:05d}_LEFT_CC.dcm")
    phi = _phi_of_real_files(real_dicoms)
    assert len(phi) >= 8 and "20161004" in phi
    with caplog.at_level(logging.DEBUG):
        run(root, normals, tmp_path / "out", LENIENT)
    out = tmp_path / "out"
    blobs = [p.read_bytes() for p in out.iterdir()] + [caplog.text.encode()]
    for name in (contracts.CASES, contracts.REJECTS, contracts.SKIPPED):
        blobs.append(pd.read_parquet(out / name).to_csv().encode())
    for value in phi:
        assert not any(value.encode() in b for b in blobs), value
