"""validate_data's report page (jinja2 template) and its stdout summary, from summaries built here."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from mammo.components.validate_data.report import render_error, render_html, summary_text


class Page(HTMLParser):
    """Checks that every tag is closed in order; collects table cells by row and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.rows: list[tuple[str, list[tuple[str, str]]]] = []
        self.scripts = 0
        self._cell_class = ""

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "br"):
            self.stack.append(tag)
        if tag == "script":
            self.scripts += 1
        if tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        if tag == "td":
            self._cell_class = dict(attrs).get("class") or ""
            self.rows[-1][1].append((self._cell_class, ""))

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, tag

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("td", "code", "span") and self.rows and self.rows[-1][1]:
            cls, text = self.rows[-1][1][-1]
            self.rows[-1][1][-1] = (cls, text + data.strip())


def _summary(success: bool, critical=(), warnings=(), group_failures=(), validation=None) -> dict:
    classes = ["calc_benign", "calc_malignant", "mass_benign", "mass_malignant", "normal"]
    by_subset = {"train": dict.fromkeys(classes, 3), "test": dict.fromkeys(classes, 1),
                 "validation": validation or dict.fromkeys(classes, 1)}
    return {
        "success": success, "critical_failures": list(critical), "warnings": list(warnings),
        "group_checks_run": ["every class in validation and test (class_coverage)"],
        "group_failures": list(group_failures),
        "statistics": {"rows": 25, "evaluated_expectations": 2, "successful_expectations": 2 - len(critical),
                       "min_per_class": 4, "seconds": 1.25, "patients_in_both_splits": 0,
                       "patients_in_train_and_validation": 0,
                       "class_counts": {c: sum(s[c] for s in by_subset.values()) for c in classes},
                       "class_counts_by_subset": by_subset},
        "suite_name": "cases", "suite_meta": {"suite_version": "9.9.9", "description": "test suite"},
        "gx_version": "1.x", "notes": {},
    }


RESULT_OK = {"success": True, "expectation_config": {"type": "expect_column_values_to_be_unique",
                                                     "kwargs": {"column": "case_id"},
                                                     "meta": {"severity": "critical", "why": "one row per case"}},
             "result": {"unexpected_count": 0, "element_count": 25}}


def test_passing_page_is_well_formed_and_self_contained() -> None:
    page = render_html(_summary(True), [RESULT_OK])
    parser = Page()
    parser.feed(page)
    assert parser.stack == [] and parser.scripts == 0
    assert "PASSED: every check met" in page and "9.9.9" in page and "All group checks met." in page
    assert "http://" not in page and "https://" not in page
    assert any("expect_column_values_to_be_unique" in text for _, cells in parser.rows for _, text in cells)


def test_failing_page_lists_failures_and_marks_the_empty_held_out_cell() -> None:
    failure = {"check": "class_coverage", "subject": "class normal in validation", "severity": "critical",
               "detail": "no case (4 cases of other classes in validation)"}
    validation = {"calc_benign": 1, "calc_malignant": 1, "mass_benign": 1, "mass_malignant": 1, "normal": 0}
    page = render_html(_summary(False, critical=["class_coverage: class normal in validation: no case"],
                                group_failures=[failure], validation=validation), [RESULT_OK])
    parser = Page()
    parser.feed(page)
    assert "FAILED: 1 critical check(s) failed" in page
    (normal_row,) = [cells for _, cells in parser.rows if cells and cells[0][1] == "normal"]
    zero_cells = [text for cls, text in normal_row if cls == "zero"]
    assert zero_cells == ["0"]  # the validation column; train / test are not marked
    assert [cls for cls, _ in parser.rows if cls == "fail-critical"] == ["fail-critical"]


def test_data_values_are_escaped() -> None:
    page = render_html(_summary(False, critical=["label: values '<script>alert(1)</script>'"]), [RESULT_OK])
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_error_page_says_why_it_could_not_run() -> None:
    page = render_error("cannot read the cases table of /x: FileNotFoundError: /x/cases.parquet <missing>")
    parser = Page()
    parser.feed(page)
    assert parser.stack == []
    assert "ERROR: the validation could not be run" in page and "&lt;missing&gt;" in page


@pytest.mark.parametrize("success, critical, warnings, verdict", [
    (True, [], [], "PASSED"),
    (True, [], ["patient_in_both_splits: 1 patient(s)"], "PASSED"),
    (False, ["class_coverage: class normal in test: no case"], [], "FAILED"),
])
def test_stdout_summary_names_verdict_failures_and_page(success, critical, warnings, verdict) -> None:
    text = summary_text(_summary(success, critical, warnings), "/out/report.html")
    lines = text.splitlines()
    assert lines[0] == f"==== validate_data: {verdict} ===="
    for line in critical + warnings:
        assert f"  - {line}" in lines
    assert ("critical (fail the run):" in lines) == bool(critical)
    assert "validation cases per class: calc_benign=1, calc_malignant=1, mass_benign=1, mass_malignant=1, normal=1" in lines
    assert lines[-1] == "report: /out/report.html"


def test_stdout_summary_is_bounded() -> None:
    critical = [f"failure {i}" for i in range(50)]
    text = summary_text(_summary(False, critical), "/r.html", limit=10)
    assert "  - failure 9" in text and "  - failure 10" not in text and "... 40 more" in text
