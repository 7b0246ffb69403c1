"""validate_data: check the ``cases`` table written by ingest before any patch is cut.

:func:`run` is the step's one entry point (the KFP component and ``mammo validate_data`` call it).
It runs the great-expectations suite and the group checks (:mod:`.checks`) and writes, into its
output folder, whatever the outcome:

* ``report.html``: the self-contained page (:mod:`.report`), the KFP ``HTML`` artifact;
* ``report.json``: the summary (``"step": "validate_data"``): verdict, failure lines, statistics;
* ``validation_result.json``: the raw GX validation result;
* ``gx/``: the GX Data Docs site (its pages load bootstrap/jquery from CDNs, so it looks plain offline).

Critical failures fail the run after a readable summary has been printed to stdout; warnings
(e.g. the CBIS-DDSM patients found in both official train and test, which balance_split drops)
are reported only. GX runs in an ephemeral context: nothing is written outside the output folder.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mammo.components.config import Config, ValidateConfig
from mammo.components.contracts import (
    DATA_DOCS_DIR,
    REPORT_HTML,
    VALIDATION_RESULT,
    read_cases,
    write_json,
    write_report,
)
from mammo.components.runtime import DataRejected
from mammo.components.validate_data import checks, report

log = logging.getLogger(__name__)

STEP = "validate_data"


@dataclass
class ValidationResult:
    """Outcome of :func:`validate`."""

    #: no critical check failed
    success: bool
    #: one line per failed critical expectation or group check
    critical_failures: list[str] = field(default_factory=list)
    #: one line per failed warning-level check
    warnings: list[str] = field(default_factory=list)
    #: expectation counts, rows, class counts (overall and per subset), patient overlaps, seconds
    statistics: dict[str, Any] = field(default_factory=dict)
    #: the report page (the KFP HTML artifact)
    html_path: str = ""
    #: the Data Docs site (``index.html`` inside)
    docs_dir: str = ""
    #: the step's ``report.json``
    report_path: str = ""
    #: what ``report.json`` holds (besides ``step``)
    summary: dict[str, Any] = field(default_factory=dict)


class ValidationFailed(DataRejected):
    """Critical checks failed; the reports are written and :attr:`result` says what failed."""

    def __init__(self, result: ValidationResult):
        super().__init__("data validation failed (critical): " + "; ".join(result.critical_failures))
        self.result = result


class ValidationRunError(RuntimeError):
    """The validation could not run at all (not: the data failed it); ``html_path`` explains it."""

    def __init__(self, message: str, html_path: str):
        super().__init__(message)
        self.html_path = html_path


def _could_not_run(out_dir: Path, what: str, exc: BaseException) -> ValidationRunError:
    """Write the error page and report, and return the exception to raise."""
    message = f"{what}: {type(exc).__name__}: {exc}"
    html_path = out_dir / REPORT_HTML
    html_path.write_text(report.render_error(message), encoding="utf-8")
    write_report(out_dir, STEP, {"success": False, "error": message})
    log.error("validate_data could not run: %s", message)
    return ValidationRunError(message, str(html_path))


def validate(cases: pd.DataFrame, out_dir: str | Path, cfg: ValidateConfig) -> ValidationResult:
    """Check ``cases`` and write the reports into ``out_dir``; never raises on bad data.

    ``success`` is False when a critical check failed. If the suite itself cannot run, the
    error page and report are still written and :class:`ValidationRunError` is raised.
    """
    import great_expectations as gx

    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = out_dir / DATA_DOCS_DIR
    if docs_dir.exists():
        # a re-run into the same folder must not list stale validation pages in the index
        shutil.rmtree(docs_dir)

    parameters = {"min_per_class": cfg.min_per_class, "min_image_side": cfg.min_image_side,
                  "max_image_side": cfg.max_image_side}
    try:
        spec = checks.load_suite_spec()
        df = checks.derive_check_columns(cases)
        raw = checks.run_suite(df, spec, parameters, docs_dir)
        group_failures = checks.group_checks(cases)
    except Exception as exc:
        raise _could_not_run(out_dir, "the validation suite could not be run", exc) from exc
    results: list[dict[str, Any]] = raw["results"]

    counts = checks.class_counts(cases)
    notes = checks.table_notes(df, counts, cfg.min_per_class)
    failed = [r for r in results if not r["success"]]
    critical = [checks.failure_line(r, notes) for r in failed if checks.severity(r) == checks.CRITICAL]
    warning = [checks.failure_line(r, notes) for r in failed if checks.severity(r) != checks.CRITICAL]
    critical += [str(f) for f in group_failures if f.severity == checks.CRITICAL]
    warning += [str(f) for f in group_failures if f.severity != checks.CRITICAL]

    def patients(column: str) -> int:
        return int(df.loc[df[column], "patient_id"].nunique()) if "patient_id" in df.columns else 0

    gx_stats = raw.get("statistics", {})
    statistics: dict[str, Any] = {
        "evaluated_expectations": int(gx_stats.get("evaluated_expectations", len(results))),
        "successful_expectations": int(gx_stats.get("successful_expectations", 0)),
        "unsuccessful_expectations": int(gx_stats.get("unsuccessful_expectations", 0)),
        "critical_failed": len(critical),
        "warnings": len(warning),
        "rows": int(len(cases)),
        "class_counts": counts,
        "class_counts_by_subset": checks.class_counts(cases, by="subset"),
        "min_per_class": int(cfg.min_per_class),
        "min_image_side": int(cfg.min_image_side),
        "max_image_side": int(cfg.max_image_side),
        # the official CBIS-DDSM train/test overlap (31 patients in the real data): reported only
        "patients_in_both_splits": patients("patient_in_both_splits"),
        "patients_in_train_and_validation": patients("patient_in_train_and_validation"),
        "seconds": round(time.perf_counter() - started, 2),
    }
    summary: dict[str, Any] = {
        "success": not critical,
        "critical_failures": critical,
        "warnings": warning,
        "group_checks_run": ["every class in validation and test (class_coverage)",
                             "declared bit depth per class and source (intensity)"],
        "group_failures": [f.to_dict() for f in group_failures],
        "statistics": statistics,
        "suite_name": spec["name"],
        "suite_meta": spec.get("meta", {}),
        "gx_version": gx.__version__,
        "notes": notes,
    }
    html_path = out_dir / REPORT_HTML
    html_path.write_text(report.render_html(summary, results), encoding="utf-8")
    write_json(out_dir / VALIDATION_RESULT, raw)
    report_path = write_report(out_dir, STEP, summary)
    for line in critical:
        log.error("critical: %s", line)
    for line in warning:
        log.warning("warning: %s", line)
    return ValidationResult(success=not critical, critical_failures=critical, warnings=warning,
                            statistics=statistics, html_path=str(html_path), docs_dir=str(docs_dir),
                            report_path=str(report_path), summary=summary)


def run(cases_dir: str | Path, out_dir: str | Path, cfg: Config) -> ValidationResult:
    """The step: validate ingest's ``cases`` in ``cases_dir``, write the reports into ``out_dir``,
    print a readable summary to stdout, and raise :class:`ValidationFailed` when a critical check
    failed (:class:`ValidationRunError` when the validation could not run). The report page
    exists in every case."""
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        cases = read_cases(cases_dir)
    except Exception as exc:
        error = _could_not_run(out, f"cannot read the cases table of {cases_dir}", exc)
        print(f"==== validate_data: ERROR ====\n{error}\nreport: {error.html_path}", flush=True)
        raise error from exc
    try:
        result = validate(cases, out, cfg.validate)
    except ValidationRunError as error:
        print(f"==== validate_data: ERROR ====\n{error}\nreport: {error.html_path}", flush=True)
        raise
    print(report.summary_text(result.summary, result.html_path), flush=True)
    if not result.success:
        raise ValidationFailed(result)
    return result
