"""validate_data's report: the self-contained HTML page (the KFP ``HTML`` artifact) and the
plain-text summary printed to stdout, which is what the KFP UI shows of a failed step.

The page is rendered from ``templates/report.html.j2`` (inline CSS, no scripts or external
resources, autoescaped); the same template renders the page that says why validation could not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from mammo.components.contracts import DATA_DOCS_DIR, SPLITS, VALIDATION_RESULT
from mammo.components.validate_data import checks

TEMPLATE = "report.html.j2"
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def expectation_rows(results: list[dict[str, Any]], notes: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One table row per expectation result, in suite order."""
    rows = []
    for entry in results:
        config = entry["expectation_config"]
        rows.append({
            "ok": bool(entry.get("success")),
            "severity": checks.severity(entry),
            "type": config["type"],
            "target": checks.target(config["kwargs"]),
            "parameters": checks.parameters_text(config["kwargs"], limit=2000),
            "observed": checks.observed(entry, notes),
            "why": (config.get("meta") or {}).get("why", ""),
        })
    return rows


def render_html(summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The report page of a validation that ran (``summary`` as written to ``report.json``)."""
    return _ENV.get_template(TEMPLATE).render(
        error=None,
        success=summary["success"],
        critical_failures=summary["critical_failures"],
        warnings=summary["warnings"],
        stats=summary["statistics"],
        suite_name=summary["suite_name"],
        suite_version=summary["suite_meta"].get("suite_version", "?"),
        suite_description=summary["suite_meta"].get("description", ""),
        gx_version=summary["gx_version"],
        subsets=list(SPLITS),
        held_out=list(checks.HELD_OUT_SUBSETS),
        group_checks_run=summary["group_checks_run"],
        group_failures=summary["group_failures"],
        expectations=expectation_rows(results, summary.get("notes")),
        docs_index=f"{DATA_DOCS_DIR}/index.html",
        raw_result=VALIDATION_RESULT,
    )


def render_error(message: str) -> str:
    """The report page when the validation could not run at all (not: the data failed it)."""
    return _ENV.get_template(TEMPLATE).render(error=message[:2000])


def summary_text(summary: dict[str, Any], html_path: str | Path, limit: int = 30) -> str:
    """What failed, in plain text: the verdict, each critical failure and warning (at most
    ``limit`` each), the class counts of the held-out subsets, and where the page is."""
    stats = summary["statistics"]
    verdict = "PASSED" if summary["success"] else "FAILED"
    lines = [f"==== validate_data: {verdict} ====",
             f"{stats['rows']} rows; {stats['successful_expectations']}/{stats['evaluated_expectations']} "
             f"expectations met; {len(summary['group_checks_run'])} group checks; "
             f"{len(summary['critical_failures'])} critical failure(s), {len(summary['warnings'])} warning(s)"]
    for title, items in (("critical (fail the run)", summary["critical_failures"]),
                         ("warnings", summary["warnings"])):
        if items:
            lines.append(f"{title}:")
            lines += [f"  - {line}"[:400] for line in items[:limit]]
            if len(items) > limit:
                lines.append(f"  ... {len(items) - limit} more (see the report page)")
    by_subset = stats.get("class_counts_by_subset") or {}
    for subset in checks.HELD_OUT_SUBSETS:
        counts = by_subset.get(subset, {})
        lines.append(f"{subset} cases per class: " + ", ".join(f"{k}={v}" for k, v in counts.items()) if counts
                     else f"{subset} cases per class: none")
    lines.append(f"report: {html_path}")
    return "\n".join(lines)
