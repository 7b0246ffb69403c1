"""validate_data: the decision table of the great-expectations suite over ``cases``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mammo.components.config import IngestConfig
from mammo.components.ingest.logic import CASE_COLUMNS, ingest
from mammo.components.validate_data.logic import (
    DERIVED_COLUMNS,
    ValidationResult,
    ValidationRunError,
    derive_check_columns,
    load_suite_spec,
    validate_cases,
)

CLASSES = [
    # label, abnormality_type, pathology
    ("calc_benign", "calcification", "benign"),
    ("calc_malignant", "calcification", "malignant"),
    ("mass_benign", "mass", "benign"),
    ("mass_malignant", "mass", "malignant"),
    ("normal", "normal", "normal"),
]


def make_cases(per_class: int = 2) -> pd.DataFrame:
    """A small valid ``cases`` frame: ``per_class`` rows per class, one patient per row.

    Rows alternate between the official train and test split (patients never overlap); every
    fourth row (k = 2, 6, ...) of the official training rows is in the validation subset; abnormal
    rows have a mask of the image's size, normal rows have no mask, crop or mask size.
    """
    rows = []
    for index, (label, abnormality, pathology) in enumerate(CLASSES):
        for k in range(per_class):
            normal = label == "normal"
            patient = f"{'N' if normal else 'P'}_{index * 100 + k:05d}"
            side, view = ("LEFT", "CC") if k % 2 == 0 else ("RIGHT", "MLO")
            rows.append(
                {
                    "case_id": f"{label}_{patient}_{side}_{view}_1",
                    "patient_id": patient,
                    "label": label,
                    "label_index": index,
                    "abnormality_type": abnormality,
                    "pathology": pathology,
                    "split": "train" if k % 2 == 0 else "test",
                    "subset": ("validation" if k % 4 == 2 else "train") if k % 2 == 0 else "test",
                    "side": side,
                    "view": view,
                    "abnormality_id": 0 if normal else 1,
                    "breast_density": None if normal else 2,
                    "assessment": None if normal else 4,
                    "subtlety": None if normal else 3,
                    "mass_shape": "OVAL" if abnormality == "mass" else None,
                    "mass_margins": "CIRCUMSCRIBED" if abnormality == "mass" else None,
                    "calc_type": "PLEOMORPHIC" if abnormality == "calcification" else None,
                    "calc_distribution": "CLUSTERED" if abnormality == "calcification" else None,
                    "image_uri": f"/data/{patient}/full.dcm",
                    "roi_mask_uri": "" if normal else f"/data/{patient}/mask.dcm",
                    "cropped_uri": "" if normal else f"/data/{patient}/crop.dcm",
                    "image_rows": 4000,
                    "image_cols": 3000,
                    "mask_rows": None if normal else 4000,
                    "mask_cols": None if normal else 3000,
                    "bits_stored": 12 if normal else 16,
                    "photometric": "MONOCHROME2",
                    "modality": "MG" if k % 3 else "",
                    "image_format": "dicom" if k % 3 else "png",
                    "pixel_spacing_mm": 0.05 if normal else None,
                    "source": "ddsm-normal" if normal else "cbis-ddsm",
                    "scanner": "HOWTEK" if normal else "",
                    "source_file": "normals.csv" if normal else f"{abnormality}_case_description_train_set.csv",
                    "source_row": k + 1,
                }
            )
    df = pd.DataFrame(rows)[CASE_COLUMNS]
    for col in ("breast_density", "assessment", "subtlety", "mask_rows", "mask_cols"):
        df[col] = df[col].astype("Int64")
    return df


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory: pytest.TempPathFactory) -> ValidationResult:
    return validate_cases(make_cases(), tmp_path_factory.mktemp("valid"), min_per_class=2)


def _mentions(lines: list[str], *words: str) -> bool:
    return any(all(w in line for w in words) for line in lines)


def test_valid_cases_pass_with_reports(valid_run: ValidationResult) -> None:
    assert valid_run.success, valid_run.critical_failures
    assert valid_run.critical_failures == [] and valid_run.warnings == []
    stats = valid_run.statistics
    assert stats["evaluated_expectations"] == len(load_suite_spec()["expectations"])
    assert stats["successful_expectations"] == stats["evaluated_expectations"]
    assert stats["class_counts"] == {label: 2 for label, _, _ in CLASSES}

    page = Path(valid_run.html_path).read_text()
    assert "PASSED" in page
    for name in ("expect_column_values_to_be_unique", "expect_table_columns_to_match_set", "mask_matches_image",
                 "patient_in_both_splits", "class_count"):
        assert name in page
    assert "http://" not in page and "https://" not in page  # self-contained
    # PNG copies carry no DICOM modality; the modality check applies to DICOM rows only
    assert set(make_cases().loc[lambda d: d["image_format"] == "png", "modality"]) == {""}

    assert (Path(valid_run.docs_dir) / "index.html").is_file()
    assert list(Path(valid_run.docs_dir).glob("validations/**/*.html"))
    saved = json.loads((Path(valid_run.html_path).parent / "validation_result.json").read_text())
    assert saved["success"] is True and saved["gx_validation_result"]["results"]


# -- one run with a planted fault per row: each test reads the failure it is about -----------------


@pytest.fixture(scope="module")
def faulty() -> pd.DataFrame:
    """``make_cases(per_class=6)`` with one fault planted per row (each row used once)."""
    cases = make_cases(per_class=6)
    cases["image_cols"] = cases["image_cols"].astype("object")
    cases["image_rows"] = cases["image_rows"].astype("Int64")
    used: set[int] = set()

    def take(mask: pd.Series) -> int:
        row = next(i for i in cases.index[mask] if i not in used)
        used.add(row)
        return row

    abnormal_dicom = (cases["image_format"] == "dicom") & (cases["label"] != "normal") & (cases["subset"] != "validation")
    test = cases["split"] == "test"
    cases.loc[take(cases["label"] == "calc_benign"), "label"] = "calc_benignn"  # unknown label
    cases.loc[take(cases["label"] == "calc_benign"), "pathology"] = "malignant"  # calc_benign saying malignant
    cases.loc[take(test), "case_id"] = cases.loc[take(test), "case_id"]  # duplicate case id
    cases.loc[take(abnormal_dicom), "mask_rows"] = 3999  # mask not of the image's size
    cases.loc[take(abnormal_dicom), "image_rows"] = pd.NA  # required value missing
    cases.loc[take(abnormal_dicom), "image_cols"] = "wide"  # not a number
    cases.loc[take(abnormal_dicom), "image_rows"] = 40  # below min_image_side
    cases.loc[take(abnormal_dicom), "modality"] = "CT"  # not a mammogram
    cases.loc[take(abnormal_dicom), "bits_stored"] = 10
    cases.loc[take(abnormal_dicom), "image_uri"] = "Mass-Training_P_00001_LEFT_CC/1.2/1.3/000000.dcm"  # unresolved
    cases.loc[take(test), "subset"] = "train"  # contradicts the official test split
    a, b = take(test), take(test)  # same patient, side, view and abnormality id twice
    for col in ("patient_id", "side", "view", "abnormality_id"):
        cases.loc[a, col] = cases.loc[b, col]
    leak_from, leak_to = take(cases["subset"] == "validation"), take(cases["subset"] == "train")
    cases.loc[leak_to, "patient_id"] = cases.loc[leak_from, "patient_id"]  # a validation patient in train
    cases.loc[leak_to, "abnormality_id"] = 7  # (another abnormality of theirs)
    return cases


@pytest.fixture(scope="module")
def faulty_run(faulty: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> ValidationResult:
    return validate_cases(faulty, tmp_path_factory.mktemp("faulty"), min_per_class=2,
                          min_image_side=64, max_image_side=12000)


def test_unknown_label_fails_naming_column_and_value(faulty_run: ValidationResult) -> None:
    assert not faulty_run.success
    assert _mentions(faulty_run.critical_failures, "expect_column_values_to_be_in_set", "label", "calc_benignn")
    # the derived consistency check catches it too
    assert _mentions(faulty_run.critical_failures, "label_consistent")


def test_label_not_matching_pathology_fails(faulty_run: ValidationResult, faulty: pd.DataFrame) -> None:
    assert _mentions(faulty_run.critical_failures, "label_consistent", faulty.loc[1, "case_id"])


def test_duplicate_case_id_fails(faulty_run: ValidationResult) -> None:
    assert _mentions(faulty_run.critical_failures, "expect_column_values_to_be_unique", "case_id")


def test_mask_size_mismatch_fails(faulty_run: ValidationResult, faulty: pd.DataFrame) -> None:
    row = faulty.index[faulty["mask_rows"] == 3999][0]
    assert _mentions(faulty_run.critical_failures, "mask_matches_image", faulty.loc[row, "case_id"])


def test_null_required_value_fails(faulty_run: ValidationResult) -> None:
    assert _mentions(faulty_run.critical_failures, "expect_column_values_to_not_be_null", "image_rows")


def test_non_numeric_size_fails_without_raising(faulty_run: ValidationResult) -> None:
    assert _mentions(faulty_run.critical_failures, "image_cols")


@pytest.mark.parametrize("column, expectation, shown", [
    ("image_rows", "expect_column_values_to_be_between", "min_value=64"),
    ("modality", "expect_column_values_to_be_in_set", "'CT'"),
    ("bits_stored", "expect_column_values_to_be_in_set", "10"),
    ("image_uri", "expect_column_values_to_match_regex", "Mass-Training_P_00001_LEFT_CC/1.2"),
])
def test_header_and_uri_checks_fail_on_implausible_values(faulty_run: ValidationResult, column, expectation,
                                                         shown) -> None:
    assert _mentions(faulty_run.critical_failures, expectation, f" on {column} ", shown)


def test_subset_that_contradicts_the_split_fails(faulty_run: ValidationResult) -> None:
    assert _mentions(faulty_run.critical_failures, "subset_consistent")


def test_same_patient_side_view_and_abnormality_twice_fails(faulty_run: ValidationResult) -> None:
    assert _mentions(faulty_run.critical_failures, "expect_compound_columns_to_be_unique",
                     "(patient_id, side, view, abnormality_id)")


def test_patient_in_train_and_validation_fails_naming_the_patient(faulty_run: ValidationResult,
                                                                 faulty: pd.DataFrame) -> None:
    leaked = faulty.loc[faulty["abnormality_id"] == 7, "patient_id"].iloc[0]
    (line,) = [f for f in faulty_run.critical_failures if "patient_in_train_and_validation" in f]
    assert f"1 patient(s) with 2 rows in both train and validation: {leaked}" in line
    assert faulty_run.statistics["patients_in_train_and_validation"] == 1


def test_html_report_opens_and_names_the_failing_expectations(faulty_run: ValidationResult) -> None:
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        """Collects the text of each table row and checks that every tag is closed in order."""

        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []
            self.rows: list[tuple[str, str]] = []
            self._row: tuple[str, list[str]] | None = None

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "br"):
                self.stack.append(tag)
            if tag == "tr":
                self._row = (dict(attrs).get("class") or "", [])

        def handle_endtag(self, tag):
            assert self.stack and self.stack.pop() == tag, tag
            if tag == "tr" and self._row:
                self.rows.append((self._row[0], " ".join(self._row[1])))
                self._row = None

        def handle_data(self, data):
            if self._row:
                self._row[1].append(data.strip())

    page = Path(faulty_run.html_path).read_text(encoding="utf-8")
    parser = Rows()
    parser.feed(page)
    assert parser.stack == []
    failing = [text for cls, text in parser.rows if cls == "fail-critical"]
    assert len(failing) == len(faulty_run.critical_failures)
    for name in ("patient_in_train_and_validation", "mask_matches_image", "subset_consistent",
                 "expect_compound_columns_to_be_unique", "expect_column_values_to_match_regex"):
        assert any(name in t and "FAIL" in t for t in failing), name
    assert f"FAILED: {len(faulty_run.critical_failures)} critical expectation(s) failed" in page
    assert (Path(faulty_run.docs_dir) / "index.html").is_file()


# -- runs of their own -------------------------------------------------------------------------------


def test_patient_in_both_official_splits_only_warns(tmp_path: Path) -> None:
    cases = make_cases()
    cases.loc[1, "patient_id"] = cases.loc[0, "patient_id"]  # train row 0 and test row 1: one patient
    result = validate_cases(cases, tmp_path, min_per_class=2)
    assert result.success, result.critical_failures
    assert _mentions(result.warnings, "patient_in_both_splits", cases.loc[0, "patient_id"])
    assert result.statistics["patients_in_both_splits"] == 1
    assert result.statistics["patients_in_train_and_validation"] == 0
    page = Path(result.html_path).read_text()
    assert "warning" in page and "patients in both official CBIS-DDSM train and test: 1" in page


def test_class_below_min_per_class_fails(tmp_path: Path) -> None:
    cases = make_cases(per_class=2)
    cases = cases.drop(index=cases.index[cases["label"] == "calc_malignant"][:1]).reset_index(drop=True)
    result = validate_cases(cases, tmp_path, min_per_class=2)
    assert not result.success
    (line,) = result.critical_failures
    # min_per_class is a run parameter: it reaches the suite's $PARAMETER
    assert "class_count" in line and "min_value=2" in line and "calc_malignant=1" in line
    assert "mass_benign" not in line
    assert result.statistics["class_counts"]["calc_malignant"] == 1


def test_missing_class_and_columns_fail(tmp_path: Path) -> None:
    cases = make_cases()
    cases = cases[cases["label"] != "normal"].reset_index(drop=True).drop(columns=["scanner"]).assign(extra=1)
    result = validate_cases(cases, tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "expect_column_distinct_values_to_contain_set", "normal")
    assert _mentions(result.critical_failures, "expect_table_columns_to_match_set", "scanner", "extra")


def test_suite_that_cannot_run_still_writes_the_page(tmp_path: Path) -> None:
    cases = make_cases().assign(class_count=1)  # a reserved column: the suite refuses to run
    with pytest.raises(ValidationRunError) as info:
        validate_cases(cases, tmp_path)
    page = Path(info.value.html_path).read_text()
    assert "could not be run" in page and "class_count" in page


def test_suite_lists_every_derived_column_with_a_severity() -> None:
    spec = load_suite_spec()
    (column_set,) = [e["kwargs"]["column_set"] for e in spec["expectations"] if e["type"] == "expect_table_columns_to_match_set"]
    assert column_set == CASE_COLUMNS + list(DERIVED_COLUMNS)
    assert list(derive_check_columns(make_cases()).columns) == [c for c in column_set]
    assert {e["meta"]["severity"] for e in spec["expectations"]} == {"critical", "warning"}


def test_ingested_synthetic_download_passes_the_suite(synth_data: Path, tmp_path: Path) -> None:
    report = ingest(synth_data / "cbis", synth_data / "normals", tmp_path / "cases", IngestConfig())
    result = validate_cases(pd.read_parquet(report.cases_path), tmp_path / "docs", min_per_class=3)
    assert result.success, result.critical_failures
    assert result.warnings == []
