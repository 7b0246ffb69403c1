"""validate_data: the decision table of the great-expectations suite over ``cases``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mammo.components.validate.logic import (
    DERIVED_COLUMNS,
    ValidationResult,
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

    Each class has a train and a test row (patients never overlap), abnormal rows have a mask of the
    image's size, normal rows have no mask, crop or mask size.
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
                    "source": "ddsm-normal" if normal else "cbis-ddsm",
                    "scanner": "HOWTEK" if normal else "",
                    "source_file": "normals.csv" if normal else f"{abnormality}_case_description_train_set.csv",
                    "source_row": k + 1,
                }
            )
    df = pd.DataFrame(rows)
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

    assert (Path(valid_run.docs_dir) / "index.html").is_file()
    assert list(Path(valid_run.docs_dir).glob("validations/**/*.html"))
    saved = json.loads((Path(valid_run.html_path).parent / "validation_result.json").read_text())
    assert saved["success"] is True and saved["gx_validation_result"]["results"]


def test_unknown_label_fails_naming_column_and_value(tmp_path: Path) -> None:
    cases = make_cases()
    cases.loc[0, "label"] = "calc_benignn"
    result = validate_cases(cases, tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "expect_column_values_to_be_in_set", "label", "calc_benignn")
    # the derived consistency check catches it too
    assert _mentions(result.critical_failures, "label_consistent")


def test_label_not_matching_pathology_fails(tmp_path: Path) -> None:
    cases = make_cases()
    cases.loc[0, "pathology"] = "malignant"  # a calc_benign row that says malignant
    result = validate_cases(cases, tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "label_consistent", cases.loc[0, "case_id"])


def test_duplicate_case_id_fails(tmp_path: Path) -> None:
    cases = make_cases()
    cases.loc[1, "case_id"] = cases.loc[0, "case_id"]
    result = validate_cases(cases, tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "expect_column_values_to_be_unique", "case_id")


def test_mask_size_mismatch_fails(tmp_path: Path) -> None:
    cases = make_cases()
    cases.loc[0, "mask_rows"] = 3999
    result = validate_cases(cases, tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "mask_matches_image", cases.loc[0, "case_id"])


def test_patient_in_both_splits_only_warns(tmp_path: Path) -> None:
    cases = make_cases()
    cases.loc[1, "patient_id"] = cases.loc[0, "patient_id"]  # train row 0 and test row 1: one patient
    result = validate_cases(cases, tmp_path)
    assert result.success, result.critical_failures
    assert _mentions(result.warnings, "patient_in_both_splits", cases.loc[0, "patient_id"])
    assert result.statistics["patients_in_both_splits"] == 1
    assert "warning" in Path(result.html_path).read_text()


def test_class_below_min_per_class_fails(tmp_path: Path) -> None:
    cases = make_cases(per_class=2)
    cases = cases.drop(index=cases.index[cases["label"] == "calc_malignant"][:1]).reset_index(drop=True)
    result = validate_cases(cases, tmp_path, min_per_class=2)
    assert not result.success
    (line,) = result.critical_failures
    assert "class_count" in line and "calc_malignant=1" in line and "mass_benign" not in line
    assert result.statistics["class_counts"]["calc_malignant"] == 1


def test_min_per_class_is_a_run_parameter(tmp_path: Path) -> None:
    result = validate_cases(make_cases(per_class=2), tmp_path, min_per_class=3)
    assert not result.success
    assert _mentions(result.critical_failures, "class_count", "min_value=3", "normal=2")


def test_missing_class_fails(tmp_path: Path) -> None:
    cases = make_cases()
    result = validate_cases(cases[cases["label"] != "normal"].reset_index(drop=True), tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "expect_column_distinct_values_to_contain_set", "normal")


def test_missing_and_extra_columns_fail(tmp_path: Path) -> None:
    cases = make_cases().drop(columns=["scanner"]).assign(extra=1)
    result = validate_cases(cases, tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "expect_table_columns_to_match_set", "scanner", "extra")


def test_null_required_value_fails(tmp_path: Path) -> None:
    cases = make_cases()
    cases["image_rows"] = cases["image_rows"].astype("Int64")
    cases.loc[0, "image_rows"] = pd.NA
    result = validate_cases(cases, tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "expect_column_values_to_not_be_null", "image_rows")


def test_non_numeric_size_fails_without_raising(tmp_path: Path) -> None:
    cases = make_cases().astype({"image_cols": "object"})
    cases.loc[0, "image_cols"] = "wide"
    result = validate_cases(cases, tmp_path)
    assert not result.success
    assert _mentions(result.critical_failures, "image_cols")


def test_suite_lists_every_derived_column_with_a_severity() -> None:
    spec = load_suite_spec()
    (column_set,) = [e["kwargs"]["column_set"] for e in spec["expectations"] if e["type"] == "expect_table_columns_to_match_set"]
    assert set(DERIVED_COLUMNS) <= set(column_set)
    assert list(derive_check_columns(make_cases()).columns) == [c for c in column_set]
    assert {e["meta"]["severity"] for e in spec["expectations"]} == {"critical", "warning"}
