"""Ingest: synthetic and real CBIS-DDSM CSVs, every layout users download, local and on GCS (emulator)."""

import csv
import datetime as dt
import io
import json
import logging
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pydicom
import pytest
from gcs_emulator import upload_dir
from PIL import Image

from mammo.components import storage
from mammo.components.config import Config
from mammo.components.imaging import to_uint8
from mammo.components.contracts import CASE_COLUMNS
from mammo.components.headers import HEADER_BLOCK
from mammo.components.ingest.logic import CSV_FILES, IngestError, assign_subsets, read_case_csv, run
from mammo.components.ingest.normals import parse_ics
from mammo.components.synth.logic import DicomHeader, synthesize, write_dicom

LENIENT = Config().with_overrides({"ingest.max_reject_fraction": 1.0})
REAL_ROWS = {"mass_case_description_train_set.csv": 1318, "mass_case_description_test_set.csv": 378,
             "calc_case_description_train_set.csv": 1546, "calc_case_description_test_set.csv": 326}
#: what identifies a case independently of where its files are
SAME = ["case_id", "patient_id", "label", "split", "subset", "side", "view", "abnormality_id", "breast_density",
        "mass_shape", "calc_type", "image_rows", "image_cols", "mask_rows", "mask_cols", "source_file", "source_row"]


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory) -> Path:
    """A tiny synthetic download (4 rows per abnormal class, 128x96 images)."""
    out = tmp_path_factory.mktemp("small")
    synthesize(out, per_class=4, seed=1, image_shape=(128, 96), progress=False)
    return out


@pytest.fixture(scope="module")
def small_cases(small_synth, tmp_path_factory) -> pd.DataFrame:
    """The cases of ``small_synth`` read from its NBIA DICOM tree (the reference for other layouts)."""
    out = tmp_path_factory.mktemp("small_out")
    run(small_synth / "cbis", small_synth / "normals", out, Config())
    return _abnormal(pd.read_parquet(out / "cases.parquet"))


def _abnormal(cases: pd.DataFrame) -> pd.DataFrame:
    return cases[cases["source"] == "cbis-ddsm"].sort_values("case_id").reset_index(drop=True)


def _copy(synth_data, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(synth_data, dst)
    return dst


# -- the synthetic download -----------------------------------------------------------------------


def test_synthetic_download_ingests_every_row(synth_data, tmp_path):
    report = run(synth_data / "cbis", synth_data / "normals", tmp_path / "out", Config())
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    assert list(cases.columns) == CASE_COLUMNS
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
    assert set(cases["modality"]) == {"MG"} and set(cases["image_format"]) == {"dicom"}
    assert report.resolution == {"nbia_names": len(abnormal)}
    normals = cases[cases["source"] == "ddsm-normal"]
    assert set(normals["scanner"]) <= {"DBA", "HOWTEK", "LUMISYS"} and set(normals["bits_stored"]) <= {12, 16}
    saved = json.loads((tmp_path / "out/report.json").read_text())
    assert saved["totals"]["read"] == len(cases) and saved["rows_per_s"] > 0


def test_subsets_keep_each_patient_in_one_of_train_and_validation(synth_data, tmp_path):
    run(synth_data / "cbis", synth_data / "normals", tmp_path / "out", Config().with_overrides({"balance.validation_fraction": 0.25}))
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    assert ((cases["split"] == "test") == (cases["subset"] == "test")).all()
    trainval = cases[cases["subset"] != "test"]
    assert set(trainval["subset"]) == {"train", "validation"}
    assert trainval.groupby("patient_id")["subset"].nunique().max() == 1
    # deterministic: the same seed gives the same subsets
    again = assign_subsets(cases, 0.25, seed=1234)
    assert (again == cases["subset"]).all()


def test_benign_without_callback_counts_as_benign(synth_data, tmp_path):
    run(synth_data / "cbis", synth_data / "normals", tmp_path / "out", Config())
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    raw = pd.concat([read_case_csv(synth_data / "cbis" / f) for f in CSV_FILES])
    assert (raw["pathology"] == "BENIGN_WITHOUT_CALLBACK").any()
    assert set(cases["pathology"]) == {"benign", "malignant", "normal"}


def _edit_csv(path: Path, row: int, **changes) -> None:
    """Change cells of one data row (0-based), keeping the file's quirks (quoted embedded newlines)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = [h.strip() for h in rows[0]]
    for col, value in changes.items():
        rows[row + 1][header.index(col)] = value
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\r\n").writerows(rows)


def _other_uids(path: str) -> str:
    folder, study, series, name = PurePosixPath(path).parts
    return f"{folder}/{study[:-5]}11111/{series[:-5]}22222/{name}"


@pytest.mark.parametrize("change, reason", [
    (lambda row: {"pathology": "MAYBE"}, "unknown_label"),
    (lambda row: {"image file path": "../../etc/passwd"}, "path_outside_root"),
    (lambda row: {"image file path": "/etc/passwd"}, "path_outside_root"),
    (lambda row: {"image file path": "gs://another-bucket/x/y/z/000000.dcm"}, "path_outside_root"),
    (lambda row: {"image file path": _other_uids(row["image file path"])}, "missing_file"),
    (lambda row: {"left or right breast": "UP"}, "bad_value"),
    (lambda row: {"patient_id": "P_99999"}, "bad_value"),
])
def test_bad_row_is_rejected_with_reason_and_nothing_lost(synth_data, tmp_path, change, reason):
    data = _copy(synth_data, tmp_path)
    path = data / "cbis/mass_case_description_train_set.csv"
    _edit_csv(path, 2, **change(read_case_csv(path).iloc[2]))
    report = run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
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
    run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    assert list(rejects["reason"]) == ["duplicate"] and rejects.iloc[0]["source_row"] == len(df) + 1
    assert "calc_case_description_test_set.csv row 1" in rejects.iloc[0]["message"]


def test_unreadable_dicom_and_mask_size_mismatch_are_rejected(synth_data, tmp_path):
    data = _copy(synth_data, tmp_path)
    df = read_case_csv(data / "cbis/mass_case_description_test_set.csv")
    cases = run(data / "cbis", data / "normals", tmp_path / "first", LENIENT)
    table = pd.read_parquet(cases.cases_path)
    rows = table[table["source_file"] == "mass_case_description_test_set.csv"].sort_values("source_row")
    broken, small = rows.iloc[0], rows.iloc[1]
    Path(broken["image_uri"]).write_bytes(b"not a dicom at all")
    write_dicom(Path(small["roi_mask_uri"]), np.zeros((40, 30), np.uint8), _hdr("X", 2))
    run(data / "cbis", data / "normals", tmp_path / "out", LENIENT)
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    reasons = dict(zip(rejects["source_row"], rejects["reason"]))
    assert reasons[int(broken["source_row"])] == "unreadable_dicom"
    assert reasons[int(small["source_row"])] == "mask_size_mismatch"
    assert len(df) == len(rows)


def test_too_many_rejects_fail_the_step_after_writing_rejects(synth_data, tmp_path):
    data = _copy(synth_data, tmp_path)
    shutil.rmtree(data / "cbis/CBIS-DDSM")
    with pytest.raises(IngestError, match="reject fraction.*missing_file"):
        run(data / "cbis", data / "normals", tmp_path / "out", Config().with_overrides({"ingest.max_reject_fraction": 0.05}))
    assert set(pd.read_parquet(tmp_path / "out/rejects.parquet")["reason"]) == {"missing_file"}


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="missing case-description CSV"):
        run(tmp_path, tmp_path, tmp_path / "out", Config())


def _phi_values(dicom_tree: Path) -> list[str]:
    ds = pydicom.dcmread(next(dicom_tree.rglob("*.dcm")))
    values = [str(ds.PatientName), str(ds.PatientBirthDate), str(ds.AccessionNumber), str(ds.OtherPatientIDs),
              str(ds.InstitutionName), "SYNTH^"]
    assert all(values)
    return values


def _assert_nothing_contains(out_dir: Path, log_text: str, values: list[str]) -> None:
    blobs = [p.read_bytes() for p in out_dir.iterdir()] + [log_text.encode()]
    blobs.append(pd.read_parquet(out_dir / "cases.parquet").to_csv().encode())
    blobs.append(pd.read_parquet(out_dir / "rejects.parquet").to_csv().encode())
    for value in values:
        assert not any(value.encode() in b for b in blobs), value


def test_no_phi_leaves_the_step(synth_data, tmp_path, caplog):
    """The synthetic DICOMs carry fake names, birth dates and accession numbers; none may leave."""
    phi = _phi_values(synth_data / "cbis/CBIS-DDSM")
    with caplog.at_level(logging.DEBUG):
        run(synth_data / "cbis", synth_data / "normals", tmp_path / "out", Config())
    _assert_nothing_contains(tmp_path / "out", caplog.text, phi)


# -- GCS (the gcp-storage-emulator on loopback) -----------------------------------------------------


def test_gcs_source_gives_the_same_cases_and_survives_transient_errors(
        small_synth, small_cases, gcs_client, gcs_bucket, flaky_gcs, tmp_path, caplog):
    data = upload_dir(gcs_client, small_synth / "cbis", gcs_bucket, "cbis-ddsm")
    normals = upload_dir(gcs_client, small_synth / "normals", gcs_bucket, "normals")
    flaky_gcs.fail_first = 3  # the first three GETs answer 503: retried, not fatal
    with caplog.at_level(logging.DEBUG):
        report = run(data, normals, tmp_path / "out", Config().with_overrides({"ingest.io_workers": 4}))
    assert flaky_gcs.failures == 3
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    assert report.totals.rejected == 0
    got = _abnormal(cases)
    pd.testing.assert_frame_equal(got[SAME], small_cases[SAME])
    assert got["image_uri"].str.startswith(f"gs://{gcs_bucket}/cbis-ddsm/CBIS-DDSM/").all()
    assert got["roi_mask_uri"].str.startswith("gs://").all()
    assert cases.loc[cases["source"] == "ddsm-normal", "image_uri"].str.startswith(f"{normals}/").all()
    # header reads are ranged: no image was downloaded beyond its first block
    images = [(path, n) for path, n in flaky_gcs.downloads if ".dcm" in path]
    assert len(images) == report.header_reads > 0
    assert max(n for _, n in images) <= HEADER_BLOCK < max(p.stat().st_size for p in small_synth.rglob("*.dcm"))
    _assert_nothing_contains(tmp_path / "out", caplog.text, _phi_values(small_synth / "cbis/CBIS-DDSM"))


def test_gcs_csv_path_cannot_reach_outside_the_prefix(small_synth, gcs_client, gcs_bucket, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in CSV_FILES:  # the CSVs only: every other row is a missing_file reject
        shutil.copy(small_synth / "cbis" / name, data / name)
    path = data / "calc_case_description_train_set.csv"
    row = read_case_csv(path).iloc[0]
    _edit_csv(path, 0, **{"image file path": "../secret/" + row["image file path"]})
    # a sibling prefix holds an object at the very path '..' would reach
    secret = tmp_path / "secret" / row["image file path"]
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"not for you")
    uri = upload_dir(gcs_client, data, gcs_bucket, "root/cbis")
    upload_dir(gcs_client, tmp_path / "secret", gcs_bucket, "root/secret")
    normals = upload_dir(gcs_client, small_synth / "normals" / "N_00001", gcs_bucket, "root/normals")
    run(uri, normals, tmp_path / "out", LENIENT)
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet").set_index(["source_file", "source_row"])
    assert rejects.loc[("calc_case_description_train_set.csv", 1), "reason"] == "path_outside_root"
    assert set(rejects["reason"]) == {"path_outside_root", "missing_file"}
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    assert not cases["image_uri"].str.contains("/secret/").any()


# -- the real CBIS-DDSM CSVs ------------------------------------------------------------------------


def _nbia_dir(csv_path: str, description: str, na: bool) -> PurePosixPath:
    folder, study, series, _ = PurePosixPath(csv_path).parts
    return PurePosixPath("CBIS-DDSM", folder, f"07-20-2016-DDSM-{'NA-' if na else ''}{study[-5:]}",
                         f"1.000000-{description}-{series[-5:]}")


def _hdr(pid: str, n: int) -> DicomHeader:
    return DicomHeader(pid, "REAL^TEST^PHI", "19600101", "1.2.3", "1.2.4", f"1.2.5.{n}", dt.date(2016, 7, 20), "101010",
                       "ACC123", "x", n, "L", "CC")


def _plant_images(root: Path, row: pd.Series, k: int, fault: str = "") -> None:
    """Files for one real CSV row in the NBIA layout (tiny images; crop/mask order varies)."""
    full = root / _nbia_dir(row["image file path"], "full mammogram images", na=k % 3 == 0)
    if fault == "unreadable_dicom":
        (full / "1-1.dcm").parent.mkdir(parents=True, exist_ok=True)
        (full / "1-1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    else:
        write_dicom(full / "1-1.dcm", np.full((64, 48), 20000, np.uint16), _hdr(row["patient_id"], 1))
    roi = root / _nbia_dir(row["ROI mask file path"], "ROI mask images", na=False)
    mask = np.zeros((60, 48) if fault == "mask_size_mismatch" else (64, 48), np.uint8)
    mask[20:30, 10:20] = 255
    crop = np.full((14, 14), 30000, np.uint16)
    first, second = (mask, crop) if k % 2 else (crop, mask)
    write_dicom(roi / "1-1.dcm", first, _hdr(row["patient_id"], 2))
    write_dicom(roi / "1-2.dcm", second, _hdr(row["patient_id"], 3))


#: planted faults: (csv, 0-based row, fault) -> reason
FAULTS = [
    ("mass_case_description_train_set.csv", 8, "unreadable_dicom"),
    ("mass_case_description_test_set.csv", 9, "mask_size_mismatch"),
    ("calc_case_description_train_set.csv", 8, "unknown_label"),
    ("calc_case_description_train_set.csv", 9, "duplicate"),
    ("calc_case_description_test_set.csv", 8, "path_outside_root"),
    ("mass_case_description_train_set.csv", 9, "bad_value"),
    ("mass_case_description_test_set.csv", 8, "missing_file"),
]


def _real_tree(real_csv_dir: Path, root: Path) -> dict:
    """The four real CSVs with planted faults, and images for the first rows (plus one naming
    000000.dcm as both crop and mask); returns {csv: (rows, ok 0-based rows, {row: reason})}."""
    root.mkdir(parents=True)
    planted = {}
    for name in CSV_FILES:
        shutil.copy(real_csv_dir / name, root / name)
        faults = {r: f for n, r, f in FAULTS if n == name}
        df = read_case_csv(root / name)
        same = df.index[df["cropped image file path"] == df["ROI mask file path"]].tolist()[:1]
        ok = sorted(set(range(6)) | set(same))
        for k in ok:
            _plant_images(root, df.loc[k], k)
        for k, fault in faults.items():
            if fault in ("unreadable_dicom", "mask_size_mismatch"):
                _plant_images(root, df.loc[k], k, fault)
            elif fault == "duplicate":  # an exact copy of an ingested row
                _edit_csv(root / name, k, **{c: df.loc[0, c] for c in df.columns})
            else:
                _plant_images(root, df.loc[k], k)  # files exist: only the cell is wrong
                cell = {"unknown_label": {"pathology": "BENIGN_MAYBE"},
                        "path_outside_root": {"ROI mask file path": "../../../../etc/passwd"},
                        "bad_value": {"image view": "LATERAL"},
                        "missing_file": {"image file path": _other_uids(df.loc[k, "image file path"])}}[fault]
                _edit_csv(root / name, k, **cell)
        planted[name] = (len(df), ok, faults, df)
    return planted


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_real_cbis_csvs_count_every_row_and_reject_each_planted_fault(real_csv_dir, tmp_path, where, request):
    planted = _real_tree(real_csv_dir, tmp_path / "cbis")
    normals = tmp_path / "normals"
    write_dicom(normals / "N_00001" / "N_00001_LEFT_CC.dcm", np.full((64, 48), 9000, np.uint16), _hdr("N_00001", 1))
    data_uri, normals_uri = tmp_path / "cbis", normals
    if where == "gcs":
        client, bucket = request.getfixturevalue("gcs_client"), request.getfixturevalue("gcs_bucket")
        data_uri = upload_dir(client, tmp_path / "cbis", bucket, "downloads/cbis")
        normals_uri = upload_dir(client, normals, bucket, "downloads/normals")

    report = run(data_uri, normals_uri, tmp_path / "out", LENIENT)
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    for name, (n, ok, faults, df) in planted.items():
        c = report.counts[name]
        assert c.read == n == REAL_ROWS[name] == c.ingested + c.rejected
        assert c.ingested == len(ok)
        got = cases[cases["source_file"] == name].set_index("source_row")
        assert sorted(got.index) == [k + 1 for k in ok]
        for k in ok:
            row, case = df.loc[k], got.loc[k + 1]
            pathology = "malignant" if row["pathology"] == "MALIGNANT" else "benign"
            kind = "mass" if row["abnormality type"] == "mass" else "calc"
            assert case["label"] == f"{kind}_{pathology}"
            assert case["patient_id"] == row["patient_id"]
            assert case["split"] == ("test" if "test" in name else "train")
            density_col = "breast_density" if "mass" in name else "breast density"
            assert case["breast_density"] == int(row[density_col])
            assert PurePosixPath(case["roi_mask_uri"]).name in ("1-1.dcm", "1-2.dcm")
            assert (case["mask_rows"], case["mask_cols"]) == (64, 48)
            assert case["image_uri"].startswith("gs://" if where == "gcs" else "/")
        mine = rejects[rejects["source_file"] == name].set_index("source_row")
        for k, fault in faults.items():
            assert mine.loc[k + 1, "reason"] == fault, (name, k, mine.loc[k + 1, "message"])
        others = mine.drop(index=[k + 1 for k in faults])
        assert set(others["reason"]) == {"missing_file"}
    assert len(cases) + len(rejects) == sum(REAL_ROWS.values()) + 1
    assert report.header_reads < 150  # only the planted files, never a scan of the tree


@pytest.mark.slow
def test_full_real_csvs_resolve_against_a_full_size_tree_in_seconds(real_csv_dir, tmp_path):
    """Throughput (issue 3, item 7): all 3,568 rows against a ~10,000-file NBIA tree."""
    from mammo.components.ingest.benchmark import bench

    report = bench(real_csv_dir, tmp_path)
    assert {name: c.read for name, c in report.counts.items() if name in REAL_ROWS} == REAL_ROWS
    assert report.totals.rejected == 0 and report.totals.ingested == sum(REAL_ROWS.values()) + 1
    assert report.resolution == {"nbia_names": sum(REAL_ROWS.values())}
    assert report.seconds < 120, f"{report.rows_per_s} rows/s"


# -- converted copies and other layouts --------------------------------------------------------------


def _dicom_files(tree: Path) -> list[tuple[Path, pydicom.Dataset]]:
    return [(p, pydicom.dcmread(p)) for p in sorted(tree.rglob("*.dcm"))]


def _classic_name(p: Path) -> str:
    """NBIA ``1-N.dcm`` -> classic ``00000{N-1}``."""
    return f"{int(p.stem.split('-')[1]) - 1:06d}"


def _write_png(path: Path, pixels: np.ndarray, bits: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16 and pixels.dtype == np.uint16:
        Image.fromarray(pixels.astype(np.uint16)).save(path)  # mode I;16
    else:
        Image.fromarray(to_uint8(pixels, 16 if pixels.dtype == np.uint16 else 8)).save(path)


@pytest.mark.parametrize("bits", [16, 8])
def test_png_converted_copy_at_the_csv_paths_gives_the_same_cases(small_synth, small_cases, tmp_path, bits):
    root = tmp_path / "png"
    root.mkdir()
    for name in CSV_FILES:
        text = (small_synth / "cbis" / name).read_bytes()
        # one variant keeps '.dcm' in the CSV text: the file name is never trusted
        (root / name).write_bytes(text.replace(b".dcm", b".png") if bits == 16 else text)
    for p, ds in _dicom_files(small_synth / "cbis/CBIS-DDSM"):
        folder = p.parts[-4]
        _write_png(root / folder / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{_classic_name(p)}.png",
                   ds.pixel_array, bits)
    report = run(root, small_synth / "normals", tmp_path / "out", Config())
    got = _abnormal(pd.read_parquet(tmp_path / "out/cases.parquet"))
    assert report.totals.rejected == 0
    pd.testing.assert_frame_equal(got[SAME], small_cases[SAME])
    assert set(got["image_format"]) == {"png"} and set(got["bits_stored"]) == {bits}
    assert got["roi_mask_uri"].str.endswith(".png").all()
    assert report.resolution == {"uid_folder": len(got)}


def test_jpeg_release_with_dicom_info_gives_the_same_cases(small_synth, small_cases, tmp_path, caplog):
    """The Kaggle layout: csv/ (four CSVs + dicom_info.csv), jpeg/<SeriesInstanceUID>/1-N.jpg."""
    root = tmp_path / "kaggle"
    (root / "csv").mkdir(parents=True)
    for name in CSV_FILES:
        shutil.copy(small_synth / "cbis" / name, root / "csv" / name)
    info = []
    for p, ds in _dicom_files(small_synth / "cbis/CBIS-DDSM"):
        rel = f"{ds.SeriesInstanceUID}/{p.stem}"
        path = root / "jpeg" / f"{rel}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(ds.pixel_array, int(ds.BitsStored))).save(path, quality=95)
        info.append({"file_path": f"CBIS-DDSM/dicom/{rel}.dcm", "image_path": f"CBIS-DDSM/jpeg/{rel}.jpg",
                     "PatientID": p.parts[-4], "PatientName": "KAGGLE^PHI^NAME", "PatientBirthDate": "19411111",
                     "SeriesDescription": ds.SeriesDescription, "SeriesInstanceUID": ds.SeriesInstanceUID,
                     "StudyInstanceUID": ds.StudyInstanceUID, "Rows": ds.Rows, "Columns": ds.Columns})
    pd.DataFrame(info).to_csv(root / "csv/dicom_info.csv", index=False)
    with caplog.at_level(logging.DEBUG):
        report = run(root, small_synth / "normals", tmp_path / "out", Config())
    got = _abnormal(pd.read_parquet(tmp_path / "out/cases.parquet"))
    pd.testing.assert_frame_equal(got[SAME], small_cases[SAME])
    assert set(got["image_format"]) == {"jpeg"} and set(got["bits_stored"]) == {8}
    assert report.resolution == {"dicom_info.csv": len(got)}
    _assert_nothing_contains(tmp_path / "out", caplog.text, ["KAGGLE^PHI^NAME", "19411111"])


def _renamed_tree(small_synth: Path, root: Path) -> list[dict]:
    """The NBIA tree with study / series folders renamed to names without digits (metadata rows returned)."""
    shutil.copytree(small_synth / "cbis", root)
    meta = []
    for series_dir in sorted({p.parent for p in (root / "CBIS-DDSM").rglob("*.dcm")}):
        ds = pydicom.dcmread(next(series_dir.glob("*.dcm")), stop_before_pixels=True)
        study_dir = series_dir.parent
        new_series = series_dir.with_name("roi" if "ROI" in series_dir.name else "full")
        series_dir.rename(new_series)
        new_study = study_dir.with_name("study")
        if study_dir != new_study:
            study_dir.rename(new_study)
        new_series = new_study / new_series.name
        meta.append({"Series UID": ds.SeriesInstanceUID, "Collection": "CBIS-DDSM", "Subject ID": study_dir.parent.name,
                     "Study UID": ds.StudyInstanceUID, "Series Description": ds.SeriesDescription,
                     "Modality": "MG", "Number of Images": len(list(new_series.glob("*.dcm"))),
                     "File Location": "./" + new_series.relative_to(root).as_posix()})
    return meta


def test_nbia_metadata_csv_resolves_folders_without_uid_digits(small_synth, small_cases, tmp_path):
    root = tmp_path / "renamed"
    meta = _renamed_tree(small_synth, root)
    pd.DataFrame(meta).to_csv(root / "metadata.csv", index=False)
    report = run(root, small_synth / "normals", tmp_path / "out", Config())
    got = _abnormal(pd.read_parquet(tmp_path / "out/cases.parquet"))
    pd.testing.assert_frame_equal(got[SAME], small_cases[SAME])
    assert report.resolution == {"metadata.csv": len(got)}
    assert not any("DICOM headers" in n for n in report.notes)


def test_dicom_headers_resolve_folders_without_uid_digits(small_synth, small_cases, tmp_path):
    root = tmp_path / "renamed"
    _renamed_tree(small_synth, root)
    report = run(root, small_synth / "normals", tmp_path / "out", Config())
    got = _abnormal(pd.read_parquet(tmp_path / "out/cases.parquet"))
    pd.testing.assert_frame_equal(got[SAME], small_cases[SAME])
    assert report.resolution == {"dicom_header": len(got)}
    with pytest.raises(IngestError, match="reject fraction"):  # and without header resolution: nothing found
        run(root, small_synth / "normals", tmp_path / "off", Config().with_overrides({"ingest.resolve_by_header": False}))


# -- normals ------------------------------------------------------------------------------------------

ICS = """ics_version 1.0
filename A-0200-1
DATE_OF_STUDY 2 7 1995
PATIENT_AGE 42
DENSITY 2
DATE_DIGITIZED 7 22 1997
DIGITIZER LUMISYS LASER
SELECTED
LEFT_CC LINES 4696 PIXELS_PER_LINE 3024 BITS_PER_PIXEL 12 RESOLUTION 50 OVERLAY
RIGHT_CC LINES 4624 PIXELS_PER_LINE 3056 BITS_PER_PIXEL 12 RESOLUTION 50
"""


def test_ics_file_gives_scanner_bits_and_spacing():
    ics = parse_ics(ICS)
    assert ics["scanner"] == "LUMISYS"
    view = ics["views"][("LEFT", "CC")]
    assert (view.lines, view.pixels_per_line, view.bits, view.spacing_mm) == (4696, 3024, 12, 0.05)


def test_scanned_ddsm_normals_record_scanner_and_bit_depth(small_synth, tmp_path, caplog):
    normals = tmp_path / "normals/normal_01/case0200"
    normals.mkdir(parents=True)
    (normals / "A-0200-1.ics").write_text(ICS)
    for side in ("LEFT", "RIGHT"):
        Image.fromarray(np.full((80, 64), 3000, np.uint16)).save(normals / f"A_0200_1.{side}_CC.png")
    (normals / "A_0200_1.LEFT_MLO.LJPEG").write_bytes(b"raw")
    with caplog.at_level(logging.DEBUG):
        report = run(small_synth / "cbis", tmp_path / "normals", tmp_path / "out", LENIENT)
    cases = pd.read_parquet(tmp_path / "out/cases.parquet")
    normal = cases[cases["source"] == "ddsm-normal"].sort_values("side")
    assert normal[["patient_id", "side", "view", "scanner", "bits_stored", "image_format"]].values.tolist() == [
        ["A_0200_1", "LEFT", "CC", "LUMISYS", 12, "png"], ["A_0200_1", "RIGHT", "CC", "LUMISYS", 12, "png"]]
    # the 80x64 PNGs are not the 4696x3024 views the .ics describes: its resolution does not apply to them
    assert normal["pixel_spacing_mm"].tolist() == [0.05, 0.05]
    assert normal["pixel_spacing_source"].tolist() == ["default:ddsm-normal"] * 2
    # an .LJPEG is an image like any other: this one is not even a JPEG stream
    assert report.counts["normals/"].read == 3
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    assert rejects[["source_file", "reason"]].values.tolist() == [["normals/", "not_an_image"]]
    assert "A_0200_1.LEFT_MLO.LJPEG: not a JPEG stream" in rejects["message"].iloc[0]
    skipped = pd.read_parquet(tmp_path / "out/skipped.parquet")
    assert skipped[["path", "reason"]].values.tolist() == [["normal_01/case0200/A-0200-1.ics", "metadata_file"]]
    _assert_nothing_contains(tmp_path / "out", caplog.text, ["2 7 1995", "PATIENT_AGE"])


def test_normals_manifest_path_outside_root_is_rejected(small_synth, tmp_path):
    normals = tmp_path / "normals"
    shutil.copytree(small_synth / "normals", normals)
    manifest = pd.read_csv(normals / "manifest.csv", dtype=str)
    manifest.loc[0, "path"] = "../cbis/" + manifest.loc[0, "path"]
    manifest.loc[1, "path"] = "N_99999/N_99999_LEFT_CC.dcm"
    manifest.to_csv(normals / "manifest.csv", index=False)
    report = run(small_synth / "cbis", normals, tmp_path / "out", LENIENT)
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet")
    assert rejects[["source_file", "source_row", "reason"]].values.tolist() == [
        ["manifest.csv", 1, "path_outside_root"], ["manifest.csv", 2, "missing_file"]]
    c = report.counts["manifest.csv"]
    assert c.read == len(manifest) == c.ingested + 2


# -- storage ------------------------------------------------------------------------------------------


def test_storage_reads_a_dicom_header_from_gcs_without_the_pixels(gcs_client, gcs_bucket, tmp_path, flaky_gcs):
    big = tmp_path / "big/1-1.dcm"
    write_dicom(big, np.zeros((1200, 900), np.uint16), _hdr("P_1", 1))
    uri = upload_dir(gcs_client, tmp_path / "big", gcs_bucket, "x")
    (entry,) = storage.list_files(uri)
    with storage.open_read(entry.uri, size=entry.size) as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
    assert (ds.Rows, ds.Columns) == (1200, 900)
    assert [n for _, n in flaky_gcs.downloads] == [storage.READ_BLOCK] and storage.READ_BLOCK < entry.size / 10
    assert storage.download_file(entry.uri, tmp_path / "copy.dcm").read_bytes() == big.read_bytes()
    assert storage.exists(entry.uri) and not storage.exists(uri + "/nothing.dcm")
    storage.write_text(uri + "/out/report.json", "{}")
    assert storage.read_text(uri + "/out/report.json") == "{}"
    with io.BytesIO(storage.read_bytes(entry.uri, 128, 132)) as head:
        assert head.read() == b"DICM"
