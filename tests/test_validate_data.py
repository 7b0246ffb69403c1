"""validate_data, the step: its entry point, its outputs and the decision table of the suite over ``cases``.

The pure group checks are in tests/test_validate_data_checks.py, the page and the stdout summary in
tests/test_validate_data_report.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from validate_data_cases import CLASSES, make_cases

from mammo.components.config import Config, ValidateConfig, demo_config
from mammo.components.contracts import CASES, DATA_DOCS_DIR, REPORT_HTML, VALIDATION_RESULT, read_report
from mammo.components.ingest.logic import run as ingest_run
from mammo.components.runtime import EXIT_DATA_REJECTED
from mammo.components.validate_data.checks import load_suite_spec
from mammo.components.validate_data.logic import (
    ValidationFailed,
    ValidationResult,
    ValidationRunError,
    run,
    validate,
)

VCFG = ValidateConfig(min_per_class=2)


def _cfg(**validate):
    return demo_config().with_overrides({f"validate.{k}": v for k, v in {"min_per_class": 2, **validate}.items()})


def _write_cases(cases: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cases.to_parquet(folder / CASES, index=False)
    return folder


def _mentions(lines: list[str], *words: str) -> bool:
    return any(all(w in line for w in words) for line in lines)


# -- the entry point: what it writes, prints and raises ------------------------------------------------


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("valid")
    return run(_write_cases(make_cases(), base / "cases"), base / "out", _cfg()), base / "out"


def test_valid_cases_pass_and_every_output_is_written(valid_run, capsys) -> None:
    result, out = valid_run
    assert result.success, result.critical_failures
    assert result.critical_failures == [] and result.warnings == []
    stats = result.statistics
    assert stats["evaluated_expectations"] == len(load_suite_spec()["expectations"])
    assert stats["successful_expectations"] == stats["evaluated_expectations"]
    assert stats["class_counts"] == {label: 4 for label, _, _ in CLASSES}
    assert stats["class_counts_by_subset"]["validation"] == {label: 1 for label, _, _ in CLASSES}

    saved = read_report(out)
    assert saved["step"] == "validate_data" and saved["success"] is True and saved["group_failures"] == []
    assert json.loads((out / VALIDATION_RESULT).read_text())["results"]
    assert (out / DATA_DOCS_DIR / "index.html").is_file()
    assert list((out / DATA_DOCS_DIR).glob("validations/**/*.html"))
    page = (out / REPORT_HTML).read_text()
    assert "PASSED" in page and "http://" not in page and "https://" not in page  # self-contained


def test_failing_data_writes_the_page_prints_what_failed_and_exits_as_rejected(tmp_path, capsys) -> None:
    cases = make_cases()
    cases = cases[~((cases["label"] == "mass_malignant") & (cases["subset"] == "validation"))]
    cases.loc[cases.index[0], "label"] = "calc_benignn"
    with pytest.raises(ValidationFailed) as info:
        run(_write_cases(cases, tmp_path / "cases"), tmp_path / "out", _cfg())
    assert info.value.code == EXIT_DATA_REJECTED  # deterministic: the pipeline does not retry it
    printed = capsys.readouterr().out
    assert "==== validate_data: FAILED ====" in printed
    assert "class_coverage: class mass_malignant in validation: no case" in printed
    assert "'calc_benignn'" in printed and "validation cases per class:" in printed
    assert f"report: {tmp_path / 'out' / REPORT_HTML}" in printed
    saved = read_report(tmp_path / "out")
    assert saved["success"] is False and saved["critical_failures"] == info.value.result.critical_failures
    assert "FAILED" in (tmp_path / "out" / REPORT_HTML).read_text()


def test_unreadable_cases_still_write_the_page(tmp_path, capsys) -> None:
    with pytest.raises(ValidationRunError) as info:
        run(tmp_path / "no-such-ingest-output", tmp_path / "out", _cfg())
    page = Path(info.value.html_path).read_text()
    assert "could not be run" in page and "no-such-ingest-output" in page
    assert read_report(tmp_path / "out")["success"] is False
    assert "==== validate_data: ERROR ====" in capsys.readouterr().out


def test_suite_that_cannot_run_still_writes_the_page(tmp_path: Path) -> None:
    cases = make_cases().assign(class_count=1)  # a reserved column: the suite refuses to run
    with pytest.raises(ValidationRunError) as info:
        validate(cases, tmp_path, VCFG)
    page = Path(info.value.html_path).read_text()
    assert "could not be run" in page and "class_count" in page


def test_cli_runs_the_same_entry_point(tmp_path, capsys) -> None:
    from mammo.pipelines.cli import main

    cases = make_cases()
    cases = cases[~((cases["label"] == "normal") & (cases["subset"] == "test"))]
    folder = _write_cases(cases, tmp_path / "cases")
    with pytest.raises(SystemExit) as info:
        main(["validate_data", "--cases", str(folder), "--out", str(tmp_path / "out"), "--profile", "demo",
              "--set", "validate.min_per_class=2"])
    assert info.value.code == EXIT_DATA_REJECTED
    assert "class_coverage: class normal in test: no case" in capsys.readouterr().out
    assert read_report(tmp_path / "out")["step"] == "validate_data"


# -- group checks inside the step (their decision tables: tests/test_validate_data_checks.py) ------------


def test_jpeg_declaring_12_bits_fails_naming_class_and_source(tmp_path) -> None:
    cases = make_cases()
    normals = cases["label"] == "normal"
    cases.loc[normals, "image_format"], cases.loc[normals, "modality"] = "jpeg", ""
    cases.loc[normals, "bits_stored"] = 12
    result = validate(cases, tmp_path, VCFG)
    (line,) = result.critical_failures
    assert line.startswith("intensity: class normal, source ddsm-normal: 4 of 4 images are jpeg files")
    assert "near-black" in line


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
    return validate(faulty, tmp_path_factory.mktemp("faulty"), VCFG)


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
    assert len(failing) == len(faulty_run.critical_failures)  # expectations and group checks
    for name in ("patient_in_train_and_validation", "mask_matches_image", "subset_consistent",
                 "expect_compound_columns_to_be_unique", "expect_column_values_to_match_regex"):
        assert any(name in t and "FAIL" in t for t in failing), name
    assert f"FAILED: {len(faulty_run.critical_failures)} critical check(s) failed" in page
    assert (Path(faulty_run.docs_dir) / "index.html").is_file()


# -- runs of their own -------------------------------------------------------------------------------


def test_patient_in_both_official_splits_only_warns(tmp_path: Path) -> None:
    cases = make_cases()
    cases.loc[1, "patient_id"] = cases.loc[0, "patient_id"]  # train row 0 and test row 1: one patient
    result = validate(cases, tmp_path, VCFG)
    assert result.success, result.critical_failures
    assert _mentions(result.warnings, "patient_in_both_splits", cases.loc[0, "patient_id"])
    assert result.statistics["patients_in_both_splits"] == 1
    assert result.statistics["patients_in_train_and_validation"] == 0
    page = Path(result.html_path).read_text()
    assert "warning" in page and "patients in both official CBIS-DDSM train and test: 1" in page


def test_class_below_min_per_class_fails(tmp_path: Path) -> None:
    cases = make_cases(per_class=4)
    # one calc_malignant training case fewer: 3 left, every subset still covered
    drop = cases.index[(cases["label"] == "calc_malignant") & (cases["subset"] == "train")][:1]
    cases = cases.drop(index=drop).reset_index(drop=True)
    result = validate(cases, tmp_path, ValidateConfig(min_per_class=4))
    assert not result.success
    short = [line for line in result.critical_failures if "class_count" in line]
    (line,) = short
    # min_per_class is a run parameter: it reaches the suite's $PARAMETER
    assert "min_value=4" in line and "calc_malignant=3" in line and "mass_benign" not in line
    assert result.statistics["class_counts"]["calc_malignant"] == 3


def test_missing_class_and_columns_fail(tmp_path: Path) -> None:
    cases = make_cases()
    cases = cases[cases["label"] != "normal"].reset_index(drop=True).drop(columns=["scanner"]).assign(extra=1)
    result = validate(cases, tmp_path, VCFG)
    assert not result.success
    assert _mentions(result.critical_failures, "expect_column_distinct_values_to_contain_set", "normal")
    assert _mentions(result.critical_failures, "expect_table_columns_to_match_set", "scanner", "extra")
    assert _mentions(result.critical_failures, "class_coverage: class normal in validation")


def test_ingested_synthetic_download_passes(synth_data: Path, tmp_path: Path) -> None:
    report = ingest_run(synth_data / "cbis", synth_data / "normals", tmp_path / "cases", Config())
    result = validate(pd.read_parquet(report.cases_path), tmp_path / "docs", ValidateConfig(min_per_class=3))
    assert result.success, result.critical_failures
    assert result.warnings == []
