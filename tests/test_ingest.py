"""Ingest on synthetic NBIA trees and on the real CBIS-DDSM case-description CSVs."""

import json
import logging
import shutil
import datetime as dt
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest

from mammo.components.config import IngestConfig
from mammo.components.ingest.logic import CSV_FILES, IngestError, ingest, read_case_csv
from mammo.components.synth.logic import DicomHeader, write_dicom

LENIENT = IngestConfig(max_reject_fraction=1.0)


def _copy(synth_data, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(synth_data, dst)
    return dst


def test_synthetic_download_ingests_every_row(synth_data, tmp_path):
    report = ingest(synth_data / "cbis", synth_data / "normals", tmp_path / "out", IngestConfig())
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    for name in CSV_FILES:
        rows = len(read_case_csv(synth_data / "cbis" / name))
        c = report.counts[name]
        assert c.read == rows == c.ingested + c.rejected and c.rejected == 0
    assert report.totals.read == len(cases)
    assert set(cases["label"]) == {"calc_benign", "calc_malignant", "mass_benign", "mass_malignant", "normal"}
    abnormal = cases[cases["source"] == "cbis-ddsm"]
    # the mask is always the file with the full image's size, whatever the CSV column says
    assert (abnormal["mask_rows"] == abnormal["image_rows"]).all()
    assert (abnormal["mask_cols"] == abnormal["image_cols"]).all()
    assert (abnormal["roi_mask_uri"] != abnormal["cropped_uri"]).all()
    assert set(cases["split"]) == {"train", "test"}
    assert cases["case_id"].is_unique
    assert json.loads((tmp_path / "out/report.json").read_text())["totals"]["read"] == len(cases)


def test_benign_without_callback_counts_as_benign(synth_data, tmp_path):
    ingest(synth_data / "cbis", synth_data / "normals", tmp_path / "out", IngestConfig())
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    raw = pd.concat([read_case_csv(synth_data / "cbis" / f) for f in CSV_FILES])
    assert (raw["pathology"] == "BENIGN_WITHOUT_CALLBACK").any()
    assert set(cases["pathology"]) == {"benign", "malignant", "normal"}


def _edit_csv(root: Path, name: str, row: int, **changes) -> None:
    path = root / "cbis" / name
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col, value in changes.items():
        df.loc[row, col] = value
    df.to_csv(path, index=False)


@pytest.mark.parametrize("changes, reason", [
    ({"pathology": "MAYBE"}, "unknown_label"),
    ({"image file path": "../../etc/passwd"}, "path_outside_root"),
    ({"image file path": "/etc/passwd"}, "path_outside_root"),
    ({"image file path": "Mass-Training_P_99999_LEFT_CC/1.2.3.11111/1.2.3.22222/000000.dcm"}, "missing_file"),
])
def test_bad_row_is_rejected_with_reason_and_nothing_lost(synth_data, tmp_path, changes, reason):
    data = _copy(synth_data, tmp_path)
    _edit_csv(data, "mass_case_description_train_set.csv", 2, **changes)
    report = ingest(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    assert list(rejects["reason"]) == [reason]
    assert rejects.iloc[0]["source_file"] == "mass_case_description_train_set.csv"
    assert rejects.iloc[0]["source_row"] == 3  # 1-based data row
    c = report.counts["mass_case_description_train_set.csv"]
    assert c.read == c.ingested + c.rejected and c.rejected == 1


def test_duplicate_row_is_rejected(synth_data, tmp_path):
    data = _copy(synth_data, tmp_path)
    path = data / "cbis/calc_case_description_test_set.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    pd.concat([df, df.iloc[[0]]]).to_csv(path, index=False)
    ingest(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    assert list(rejects["reason"]) == ["duplicate"] and rejects.iloc[0]["source_row"] == len(df) + 1


def test_unreadable_dicom_and_mask_size_mismatch_are_rejected(synth_data, tmp_path):
    data = _copy(synth_data, tmp_path)
    df = read_case_csv(data / "cbis/mass_case_description_test_set.csv")
    cases = ingest(data / "cbis", data / "normals", tmp_path / "first", LENIENT)
    table = pd.read_parquet(cases.cases_path)
    rows = table[table["source_file"] == "mass_case_description_test_set.csv"].sort_values("source_row")
    broken, small = rows.iloc[0], rows.iloc[1]
    Path(broken["image_uri"]).write_bytes(b"not a dicom at all")
    mask = Path(small["roi_mask_uri"])
    write_dicom(mask, np.zeros((40, 30), np.uint8), DicomHeader("X", "Y", "19500101", "1.2", "1.3", "1.4",
                                                                 dt.date(2016, 1, 1), "120000", "A1", "ROI", 2, "L", "CC"))
    ingest(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    reasons = dict(zip(rejects["source_row"], rejects["reason"]))
    assert reasons[int(broken["source_row"])] == "unreadable_dicom"
    assert reasons[int(small["source_row"])] == "mask_size_mismatch"
    assert len(df) == len(rows)


def test_too_many_rejects_fail_the_step_after_writing_rejects(synth_data, tmp_path):
    data = _copy(synth_data, tmp_path)
    shutil.rmtree(data / "cbis/CBIS-DDSM")
    with pytest.raises(IngestError, match="reject fraction"):
        ingest(data / "cbis", data / "normals", tmp_path / "out", IngestConfig(max_reject_fraction=0.05))
    assert set(pd.read_parquet(tmp_path / "out/rejects.parquet")["reason"]) == {"missing_file"}


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="missing case-description CSV"):
        ingest(tmp_path, tmp_path, tmp_path / "out", IngestConfig())


def test_no_phi_leaves_the_step(synth_data, tmp_path, caplog):
    """The synthetic DICOMs carry fake names, birth dates and accession numbers; none may leave."""
    import pydicom

    first = next((synth_data / "cbis/CBIS-DDSM").rglob("*.dcm"))
    ds = pydicom.dcmread(first)
    phi = [str(ds.PatientName), str(ds.PatientBirthDate), str(ds.AccessionNumber), str(ds.OtherPatientIDs)]
    assert all(phi)
    with caplog.at_level(logging.DEBUG):
        ingest(synth_data / "cbis", synth_data / "normals", tmp_path / "out", IngestConfig())
    blobs = [p.read_bytes() for p in (tmp_path / "out").iterdir()] + [caplog.text.encode()]
    blobs.append(pd.read_parquet(tmp_path / "out/cases.parquet").to_csv().encode())
    for value in phi + ["SYNTH^"]:
        assert not any(value.encode() in b for b in blobs), value


# -- the real CBIS-DDSM CSVs --------------------------------------------------------------------


def _nbia_dir(csv_path: str, description: str, na: bool) -> PurePosixPath:
    folder, study, series, _ = PurePosixPath(csv_path).parts
    return PurePosixPath("CBIS-DDSM", folder, f"07-20-2016-DDSM-{'NA-' if na else ''}{study[-5:]}",
                         f"1.000000-{description}-{series[-5:]}")


def _hdr(pid: str, n: int) -> DicomHeader:
    return DicomHeader(pid, "REAL^TEST", "19600101", "1.2.3", "1.2.4", f"1.2.5.{n}", dt.date(2016, 7, 20), "101010",
                       "ACC123", "x", n, "L", "CC")


def _plant_images(root: Path, row: pd.Series, k: int) -> None:
    """Files for one real CSV row in the NBIA layout (tiny images; crop/mask order varies)."""
    full = root / _nbia_dir(row["image file path"], "full mammogram images", na=k % 3 == 0)
    write_dicom(Path(full) / "1-1.dcm", np.full((60, 40), 20000, np.uint16), _hdr(row["patient_id"], 1))
    roi = root / _nbia_dir(row["ROI mask file path"], "ROI mask images", na=False)
    mask = np.zeros((60, 40), np.uint8)
    mask[20:30, 10:20] = 255
    crop = np.full((14, 14), 30000, np.uint16)
    first, second = (mask, crop) if k % 2 else (crop, mask)
    write_dicom(Path(roi) / "1-1.dcm", first, _hdr(row["patient_id"], 2))
    write_dicom(Path(roi) / "1-2.dcm", second, _hdr(row["patient_id"], 3))


def test_real_cbis_csvs_resolve_to_the_nbia_layout_and_count_every_row(real_csv_dir, tmp_path):
    root = tmp_path / "cbis"
    root.mkdir()
    planted = {}
    for name in CSV_FILES:
        shutil.copy(real_csv_dir / name, root / name)
        df = read_case_csv(root / name)
        # the first rows, plus a row naming 000000.dcm for both crop and mask where there is one
        same = df.index[df["cropped image file path"] == df["ROI mask file path"]].tolist()[:1]
        pick = sorted(set(range(6)) | set(same))
        for k in pick:
            _plant_images(root, df.loc[k], k)
        planted[name] = (len(df), pick, df)
    normals = tmp_path / "normals"
    write_dicom(normals / "N_00001" / "N_00001_LEFT_CC.dcm", np.full((60, 40), 9000, np.uint16), _hdr("N_00001", 1))

    report = ingest(root, normals, tmp_path / "out", LENIENT)
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    expected_rows = {"mass_case_description_train_set.csv": 1318, "mass_case_description_test_set.csv": 378,
                     "calc_case_description_train_set.csv": 1546, "calc_case_description_test_set.csv": 326}
    for name, (n, pick, df) in planted.items():
        c = report.counts[name]
        assert c.read == n == expected_rows[name]
        assert c.ingested == len(pick) and c.rejected == n - len(pick)
        got = cases[cases["source_file"] == name].set_index("source_row")
        for k in pick:
            row = df.loc[k]
            case = got.loc[k + 1]
            pathology = "malignant" if row["pathology"] == "MALIGNANT" else "benign"
            kind = "mass" if row["abnormality type"] == "mass" else "calc"
            assert case["label"] == f"{kind}_{pathology}"
            assert case["patient_id"] == row["patient_id"]
            assert case["split"] == ("test" if "test" in name else "train")
            density_col = "breast_density" if "mass" in name else "breast density"
            assert case["breast_density"] == int(row[density_col])
            assert Path(case["roi_mask_uri"]).name in ("1-1.dcm", "1-2.dcm")
            assert (case["mask_rows"], case["mask_cols"]) == (60, 40)
    assert set(rejects["reason"]) == {"missing_file"}
    assert len(cases) + len(rejects) == sum(expected_rows.values()) + 1
