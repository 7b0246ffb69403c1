"""validate_data: a great-expectations suite over the ``cases`` table written by ingest.

The suite lives next to this module in ``expectations.json`` (versioned with the code, loaded at
run time). Each expectation carries ``meta.severity``: ``critical`` failures fail the run, ``warning``
failures are reported only (e.g. the 31 CBIS-DDSM patients found in both train and test, which
balance_split drops). The run-time parameters ``min_per_class``, ``min_image_side`` and
``max_image_side`` reach the suite as GX suite parameters (``{"$PARAMETER": "min_per_class"}``).

What the suite checks: the exact column set; required values; value sets (label, type, pathology,
split, subset, side, view, bits, photometric interpretation, format, source; DICOM modality);
``case_id`` and ``(patient, side, view, abnormality id)`` uniqueness; resolved, absolute image
URIs; image header checks (size bounds, mask size equals image size, pixel spacing); per-class
minimum counts; no patient in both ``train`` and ``validation`` (critical); the official
train/test patient overlap (a warning, counted in the statistics).

Checks that span rows or columns are computed into boolean / count columns first
(:func:`derive_check_columns`) so plain column expectations can test them and the Data Docs show
them: ``label_consistent``, ``label_index_consistent``, ``mask_matches_image``,
``roi_mask_consistent``, ``source_consistent``, ``subset_consistent``, ``patient_in_both_splits``,
``patient_in_train_and_validation`` and ``class_count``.

Outputs (in ``out_dir``):

* ``data_docs/``: the GX Data Docs site (built by ``UpdateDataDocsAction``; its pages load
  bootstrap/jquery from CDNs, so it looks plain offline);
* ``validation.html``: one self-contained page (inline CSS, no external resources) rendered here
  from the validation result; this is the KFP ``HTML`` artifact;
* ``validation_result.json``: the summary plus the raw GX validation result.

GX runs in an *ephemeral* context (in-memory stores, only the docs site touches the disk), with
analytics and progress bars off, so nothing is written outside ``out_dir`` and nothing is sent out.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mammo.components.config import CLASS_NAMES

if TYPE_CHECKING:  # great_expectations is imported lazily: it costs seconds to import
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.data_context import AbstractDataContext

log = logging.getLogger(__name__)

#: the versioned suite (package data)
SUITE_PATH = Path(__file__).with_name("expectations.json")

CRITICAL = "critical"
WARNING = "warning"

#: columns added by :func:`derive_check_columns`; the suite's column-set expectation lists them too
DERIVED_COLUMNS: tuple[str, ...] = (
    "label_consistent",
    "label_index_consistent",
    "mask_matches_image",
    "roi_mask_consistent",
    "source_consistent",
    "subset_consistent",
    "patient_in_both_splits",
    "patient_in_train_and_validation",
    "class_count",
)

#: (abnormality_type, pathology) -> label
LABEL_OF: dict[tuple[str, str], str] = {
    ("calcification", "benign"): "calc_benign",
    ("calcification", "malignant"): "calc_malignant",
    ("mass", "benign"): "mass_benign",
    ("mass", "malignant"): "mass_malignant",
    ("normal", "normal"): "normal",
}

#: identifying columns shown next to failing values (only those present in the frame are used)
INDEX_COLUMNS: tuple[str, ...] = ("case_id", "patient_id", "label")
#: failing values / rows kept per expectation in the result
PARTIAL_UNEXPECTED_COUNT = 20


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_cases`."""

    #: all CRITICAL expectations passed
    success: bool
    #: one human-readable line per failed critical expectation (expectation, column, failing values)
    critical_failures: list[str] = field(default_factory=list)
    #: one line per failed non-critical (warning) expectation
    warnings: list[str] = field(default_factory=list)
    #: evaluated / successful / unsuccessful counts, per-severity failures, rows, class counts
    statistics: dict[str, Any] = field(default_factory=dict)
    #: the single self-contained HTML page (the KFP HTML artifact)
    html_path: str = ""
    #: the full Data Docs site directory (``index.html`` inside)
    docs_dir: str = ""


# -- derived check columns ------------------------------------------------------------------------


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """``df[name]``, or an all-null column when it is missing (the column-set check reports that)."""
    if name in df.columns:
        return df[name]
    return pd.Series([pd.NA] * len(df), index=df.index, dtype="object")


def _as_bool(values: pd.Series | Any, index: pd.Index) -> pd.Series:
    """A plain ``bool`` column from a comparison result; null (unknown) counts as False."""
    series = values if isinstance(values, pd.Series) else pd.Series(values, index=index)
    return series.astype("boolean").fillna(False).astype(bool)


def _is_empty_text(values: pd.Series) -> pd.Series:
    """True where a text cell is null or blank."""
    return values.isna() | (values.astype("string").str.strip() == "")


def derive_check_columns(cases: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``cases`` with the :data:`DERIVED_COLUMNS` appended.

    Missing input columns do not raise: the derived value becomes False / null and the suite's
    column-set expectation names what is missing.
    """
    clash = [c for c in DERIVED_COLUMNS if c in cases.columns]
    if clash:
        raise ValueError(f"cases already has column(s) reserved for validation checks: {clash}")
    df = cases.copy()
    idx = df.index
    label = _column(df, "label")
    abnormality_type = _column(df, "abnormality_type")
    pathology = _column(df, "pathology")
    is_normal = _as_bool(abnormality_type == "normal", idx)

    expected_label = [
        LABEL_OF.get((a, p)) if isinstance(a, str) and isinstance(p, str) else None
        for a, p in zip(abnormality_type, pathology)
    ]
    df["label_consistent"] = _as_bool(
        pd.Series([e is not None and e == lab for e, lab in zip(expected_label, label)], index=idx), idx
    )

    position = {name: i for i, name in enumerate(CLASS_NAMES)}
    label_index = pd.to_numeric(_column(df, "label_index"), errors="coerce")
    df["label_index_consistent"] = _as_bool(label_index == label.map(position), idx)

    image_rows, image_cols = _column(df, "image_rows"), _column(df, "image_cols")
    mask_rows, mask_cols = _column(df, "mask_rows"), _column(df, "mask_cols")
    same_size = _as_bool((mask_rows == image_rows) & (mask_cols == image_cols), idx)
    df["mask_matches_image"] = is_normal | same_size

    no_mask = _is_empty_text(_column(df, "roi_mask_uri"))
    no_crop = _is_empty_text(_column(df, "cropped_uri"))
    normal_ok = no_mask & no_crop & mask_rows.isna() & mask_cols.isna()
    df["roi_mask_consistent"] = (is_normal & normal_ok) | (~is_normal & ~no_mask)

    df["source_consistent"] = _as_bool(
        (label == "normal") == (_column(df, "source") == "ddsm-normal"), idx
    ) & label.notna()

    splits = _column(df, "split")
    subset = _column(df, "subset")
    df["subset_consistent"] = _as_bool((splits == "test") == (subset == "test"), idx) & subset.notna()

    patient = _column(df, "patient_id")
    splits_per_patient = splits.groupby(patient, dropna=True).transform("nunique")
    df["patient_in_both_splits"] = _as_bool(splits_per_patient > 1, idx)
    # train / validation leakage: a patient with rows in both subsets (test rows do not count)
    trainval = subset.where(subset.isin(["train", "validation"]))
    subsets_per_patient = trainval.groupby(patient, dropna=True).transform("nunique")
    df["patient_in_train_and_validation"] = _as_bool(subsets_per_patient > 1, idx) & trainval.notna()

    # per-row size of the row's class; classes absent altogether are caught by the
    # distinct-values expectation on `label`
    df["class_count"] = label.groupby(label, dropna=True).transform("size").astype("Int64")
    return df


# -- the suite -----------------------------------------------------------------------------------


def _key(expectation: dict[str, Any]) -> tuple[str, str]:
    """(type, column): identifies an expectation of this suite (table expectations have no column)."""
    return expectation["type"], str(expectation["kwargs"].get("column", ""))


def load_suite_spec(path: str | Path = SUITE_PATH) -> dict[str, Any]:
    """The suite as stored (name, meta, expectations with ``meta.severity``).

    Raises ValueError when an expectation lacks a valid severity or two share a type and column
    (GX would silently merge them: it upserts expectations by domain).
    """
    spec = json.loads(Path(path).read_text())
    seen: set[tuple[str, str]] = set()
    for i, exp in enumerate(spec["expectations"]):
        severity = exp.get("meta", {}).get("severity")
        if severity not in (CRITICAL, WARNING):
            raise ValueError(f"{path}: expectation {i} ({exp.get('type')}) has no valid meta.severity: {severity!r}")
        if _key(exp) in seen:
            raise ValueError(f"{path}: expectation {i} repeats {_key(exp)}")
        seen.add(_key(exp))
    return spec


def _build_suite(spec: dict[str, Any]) -> ExpectationSuite:
    """An ExpectationSuite from the stored spec; ``meta.severity`` also becomes GX's own severity."""
    import great_expectations as gx

    expectations = [
        {
            "type": exp["type"],
            "kwargs": exp["kwargs"],
            "meta": exp["meta"],
            # Data Docs render `notes`, not `meta`: show the reason there too
            "notes": exp.get("notes") or f"[{exp['meta']['severity']}] {exp['meta'].get('why', '')}".strip(),
            "severity": exp["meta"]["severity"],
        }
        for exp in spec["expectations"]
    ]
    suite = gx.ExpectationSuite(name=spec["name"], expectations=expectations, meta=dict(spec.get("meta", {})))
    # GX logs (and drops) an invalid expectation instead of raising: refuse a partial suite
    if len(suite.expectations) != len(expectations):
        raise ValueError(
            f"suite {spec['name']!r}: only {len(suite.expectations)} of {len(expectations)} expectations are valid"
        )
    return suite


def _make_context(docs_dir: Path) -> AbstractDataContext:
    """An ephemeral GX context whose only on-disk part is the Data Docs site in ``docs_dir``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={
            "local_site": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_suite(df: pd.DataFrame, spec: dict[str, Any], parameters: dict[str, int], docs_dir: Path) -> dict[str, Any]:
    """Validate ``df`` against the suite through a Checkpoint that also builds the Data Docs.

    Returns the GX ExpectationSuiteValidationResult as a JSON-able dict.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    context = _make_context(docs_dir)
    batch_definition = (
        context.data_sources.add_pandas("cases")
        .add_dataframe_asset("cases")
        .add_batch_definition_whole_dataframe("whole_table")
    )
    suite = context.suites.add(_build_suite(spec))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="cases", data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate_data",
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": PARTIAL_UNEXPECTED_COUNT,
                "unexpected_index_column_names": [c for c in INDEX_COLUMNS if c in df.columns],
            },
        )
    )
    # the dataframe is bound at run time (whole-dataframe batch definition), as are the parameters
    result = checkpoint.run(
        batch_parameters={"dataframe": df},
        expectation_parameters={k: int(v) for k, v in parameters.items()},
        run_id=RunIdentifier(run_name="validate_data"),
    )
    (validation_result,) = result.run_results.values()
    return validation_result.to_json_dict()


# -- summarising ---------------------------------------------------------------------------------


def _short(value: Any, limit: int = 80) -> str:
    """A value as JSON-ish text (strings quoted, whole floats as ints), cut at ``limit`` characters."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # GX turns suite parameters into floats: min_value=3.0
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exception_message(entry: dict[str, Any]) -> str | None:
    """The exception GX caught while evaluating an expectation, if any (two shapes exist)."""
    info = entry.get("exception_info") or {}
    candidates = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for item in candidates:
        if item.get("raised_exception"):
            return str(item.get("exception_message") or "exception").strip().splitlines()[0]
    return None


def _table_notes(df: pd.DataFrame, class_counts: dict[str, int], min_per_class: int) -> dict[str, str]:
    """Whole-table explanations for derived columns whose failing rows stand for a group.

    ``class_count`` fails row by row although a class is short, and ``patient_in_both_splits``
    flags rows although patients overlap: for those, report the classes / patients instead.
    """
    notes: dict[str, str] = {}
    short = [f"{name}={class_counts.get(name, 0)}" for name in CLASS_NAMES if class_counts.get(name, 0) < min_per_class]
    if short:
        notes["class_count"] = f"classes below min_per_class={min_per_class}: " + ", ".join(short)
    if "patient_id" in df.columns:
        for column, where in (("patient_in_train_and_validation", "train and validation"),
                              ("patient_in_both_splits", "train and test")):
            rows = df.loc[df[column], "patient_id"]
            patients = sorted(rows.dropna().astype(str).unique())
            if patients:
                more = ", ..." if len(patients) > 10 else ""
                notes[column] = (f"{len(patients)} patient(s) with {len(rows)} rows in both {where}: "
                                 + ", ".join(patients[:10]) + more)
    return notes


def _observed(entry: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """What the data showed, in one line: unexpected values and sample rows, or the observed value.

    ``notes`` (by column, see :func:`_table_notes`) replace the row-level detail of a failed
    expectation on that column.
    """
    config, res = entry["expectation_config"], entry.get("result") or {}
    kwargs = config["kwargs"]
    error = _exception_message(entry)
    if error:
        return f"could not be evaluated: {error}"
    if notes and kwargs.get("column") in notes and not entry.get("success"):
        return notes[kwargs["column"]]
    mismatched = (res.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):
        parts = [f"{k} columns {_short(sorted(v), 200)}" for k, v in mismatched.items() if v]
        return "; ".join(parts) or "column set differs"
    if "unexpected_count" in res:
        n, total = res.get("unexpected_count") or 0, res.get("element_count") or 0
        text = f"{n} of {total} rows unexpected"
        if res.get("missing_count"):
            text += f" ({res['missing_count']} null, ignored)"
        counts = res.get("partial_unexpected_counts") or []
        if counts:
            text += "; values " + ", ".join(f"{_short(c['value'], 40)} (x{c['count']})" for c in counts[:5])
        rows = res.get("partial_unexpected_index_list") or []
        for col in res.get("unexpected_index_column_names") or []:
            if col == kwargs.get("column"):
                continue
            seen = list(dict.fromkeys(str(r.get(col)) for r in rows if isinstance(r, dict) and col in r))
            if seen:
                more = ", ..." if len(seen) > 5 else ""
                text += f"; {col} " + ", ".join(seen[:5]) + more
        return text
    if res.get("partial_missing_list"):  # set-containment expectations (GX >= 1.2x)
        return f"{res.get('missing_count', '')} missing: {_short(sorted(res['partial_missing_list'], key=str), 200)}"
    return f"observed {_short(res.get('observed_value'), 200)}"


def _parameters(kwargs: dict[str, Any], limit: int = 120) -> str:
    """The expectation's arguments other than its column (and GX's batch id); long lists abridged."""
    shown = {k: v for k, v in kwargs.items() if k not in ("batch_id", "column", "column_list", "condition_parser")}
    parts = []
    for k, v in shown.items():
        text = _short(v, limit)
        if isinstance(v, list) and text.endswith("..."):
            text = f"[{len(v)} values]"
        parts.append(f"{k}={text}")
    return ", ".join(parts)


def _target(kwargs: dict[str, Any]) -> str:
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_list" in kwargs:
        return "(" + ", ".join(map(str, kwargs["column_list"])) + ")"
    return "(table)"


def _failure_line(entry: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """``<expectation> on <column> [<parameters>]: <what failed>``."""
    config = entry["expectation_config"]
    params = _parameters(config["kwargs"])
    target = f"{config['type']} on {_target(config['kwargs'])}" + (f" [{params}]" if params else "")
    return f"{target}: {_observed(entry, notes)}"


def _severity(entry: dict[str, Any]) -> str:
    # a failure without a known severity fails the run (fail safe)
    return (entry["expectation_config"].get("meta") or {}).get("severity", CRITICAL)


def _class_counts(df: pd.DataFrame) -> dict[str, int]:
    if "label" not in df.columns:
        return {}
    counts = df["label"].value_counts(dropna=True)
    names = list(CLASS_NAMES) + sorted(str(k) for k in counts.index if k not in CLASS_NAMES)
    return {name: int(counts.get(name, 0)) for name in names}


# -- the self-contained HTML page ----------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:24px 0 8px}
.meta{color:#555;font-size:13px}
.banner{padding:10px 14px;border-radius:6px;font-weight:600;margin:14px 0}
.ok{background:#e6f4ea;color:#1e6b34}.bad{background:#fde7e9;color:#a4161a}.warn{background:#fff4d6;color:#7a5200}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border:1px solid #ddd;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr.fail-critical td{background:#fdf1f2}tr.fail-warning td{background:#fffaeb}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:12px;font-weight:600}
.b-critical{background:#a4161a;color:#fff}.b-warning{background:#d99a00;color:#fff}
.b-pass{background:#1e6b34;color:#fff}.b-fail{background:#444;color:#fff}
code{font-family:SFMono-Regular,Consolas,monospace;font-size:12px}
ul{margin:4px 0 4px 18px;padding:0}li{margin:2px 0}
.small{color:#666;font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_html(
    summary: dict[str, Any], results: list[dict[str, Any]], suite_meta: dict[str, Any]
) -> str:
    """One self-contained HTML page (inline CSS, no scripts or external resources)."""
    stats = summary["statistics"]
    if not summary["success"]:
        banner = f'<div class="banner bad">FAILED: {len(summary["critical_failures"])} critical expectation(s) failed</div>'
    elif summary["warnings"]:
        banner = f'<div class="banner warn">PASSED with {len(summary["warnings"])} warning(s)</div>'
    else:
        banner = '<div class="banner ok">PASSED: every expectation met</div>'

    def bullet_list(title: str, lines: list[str]) -> str:
        if not lines:
            return ""
        items = "".join(f"<li><code>{_e(line)}</code></li>" for line in lines)
        return f"<h2>{_e(title)}</h2><ul>{items}</ul>"

    below = '<span class="badge b-critical">below minimum</span>'
    class_rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{count}</td><td>{below if count < stats['min_per_class'] else ''}</td></tr>"
        for name, count in stats["class_counts"].items()
    )
    rows = []
    for i, entry in enumerate(results, start=1):
        config = entry["expectation_config"]
        meta = config.get("meta") or {}
        severity = meta.get("severity", CRITICAL)
        ok = bool(entry.get("success"))
        css = "" if ok else f' class="fail-{_e(severity)}"'
        status = '<span class="badge b-pass">pass</span>' if ok else '<span class="badge b-fail">FAIL</span>'
        rows.append(
            f"<tr{css}><td>{i}</td><td><span class=\"badge b-{_e(severity)}\">{_e(severity)}</span></td>"
            f"<td>{status}</td><td><code>{_e(config['type'])}</code></td><td><code>{_e(_target(config['kwargs']))}</code></td>"
            f"<td><code>{_e(_parameters(config['kwargs'], limit=2000))}</code></td><td>{_e(_observed(entry, summary.get('notes')))}</td>"
            f"<td class=\"small\">{_e(meta.get('why', ''))}</td></tr>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>validate_data: cases</title><style>{_CSS}</style></head>
<body>
<h1>validate_data: the <code>cases</code> table</h1>
<div class="meta">suite <code>{_e(summary['suite_name'])}</code> version {_e(suite_meta.get('suite_version', '?'))}
 &middot; great_expectations {_e(summary['gx_version'])} &middot; {stats['rows']} rows
 &middot; min_per_class {stats['min_per_class']} &middot; {stats['evaluated_expectations']} expectations evaluated,
 {stats['successful_expectations']} met &middot; {stats['seconds']:.1f} s</div>
{banner}
<p class="meta">patients in both official CBIS-DDSM train and test: {stats.get('patients_in_both_splits', 0)} (reported;
balance_split drops them from train/validation) &middot; patients in both train and validation:
{stats.get('patients_in_train_and_validation', 0)}</p>
{bullet_list('Critical failures (fail the run)', summary['critical_failures'])}
{bullet_list('Warnings (reported only)', summary['warnings'])}
<h2>Rows per class</h2>
<table style="width:auto"><tr><th>class</th><th>rows</th><th></th></tr>{class_rows}</table>
<h2>Expectations</h2>
<p class="small">{_e(suite_meta.get('description', ''))}</p>
<table><tr><th>#</th><th>severity</th><th>result</th><th>expectation</th><th>column</th><th>parameters</th>
<th>observed / unexpected</th><th>why</th></tr>
{''.join(rows)}
</table>
<p class="small">The full great-expectations Data Docs site is in <code>data_docs/index.html</code> next to this
page; the raw result is in <code>validation_result.json</code>.</p>
</body></html>
"""


# -- the step ------------------------------------------------------------------------------------


class ValidationRunError(RuntimeError):
    """The suite could not be run at all (not: the data failed it); ``html_path`` explains it."""

    def __init__(self, message: str, html_path: str):
        super().__init__(message)
        self.html_path = html_path


def _error_page(out_dir: Path, exc: BaseException) -> str:
    """A self-contained page saying why validation could not run (the HTML artifact is always made)."""
    path = out_dir / "validation.html"
    path.write_text(
        f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>validate_data: error</title><style>{_CSS}</style></head>
<body><h1>validate_data: the <code>cases</code> table</h1>
<div class="banner bad">ERROR: the validation suite could not be run</div>
<p><code>{_e(type(exc).__name__)}: {_e(str(exc)[:2000])}</code></p></body></html>
""",
        encoding="utf-8",
    )
    return str(path)


def validate_cases(
    cases: pd.DataFrame,
    out_dir: str | Path,
    min_per_class: int = 1,
    min_image_side: int = 64,
    max_image_side: int = 12000,
) -> ValidationResult:
    """Validate ``cases`` against the versioned suite; write the Data Docs, HTML page and JSON result.

    Never raises on bad data: the caller fails the run when ``success`` is False (a critical
    expectation failed). Warnings never affect ``success``. If the suite itself cannot run,
    an error page is still written and :class:`ValidationRunError` is raised.
    """
    import great_expectations as gx

    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = out_dir / "data_docs"
    if docs_dir.exists():
        # a re-run into the same folder must not list stale validation pages in the index
        shutil.rmtree(docs_dir)

    parameters = {"min_per_class": min_per_class, "min_image_side": min_image_side, "max_image_side": max_image_side}
    try:
        spec = load_suite_spec()
        df = derive_check_columns(cases)
        raw = _run_suite(df, spec, parameters, docs_dir)
    except Exception as exc:
        html_path = _error_page(out_dir, exc)
        log.error("validate_data could not run the suite: %s: %s", type(exc).__name__, exc)
        raise ValidationRunError(f"validation could not run: {type(exc).__name__}: {exc}", html_path) from exc
    # GX returns results grouped by its metric graph, not in suite order: restore the suite order
    position = {_key(exp): i for i, exp in enumerate(spec["expectations"])}
    results: list[dict[str, Any]] = sorted(
        raw["results"], key=lambda r: position.get(_key(r["expectation_config"]), len(position))
    )

    class_counts = _class_counts(cases)
    notes = _table_notes(df, class_counts, min_per_class)
    critical = [_failure_line(r, notes) for r in results if not r["success"] and _severity(r) == CRITICAL]
    warning = [_failure_line(r, notes) for r in results if not r["success"] and _severity(r) != CRITICAL]
    gx_stats = raw.get("statistics", {})
    statistics: dict[str, Any] = {
        "evaluated_expectations": int(gx_stats.get("evaluated_expectations", len(results))),
        "successful_expectations": int(gx_stats.get("successful_expectations", 0)),
        "unsuccessful_expectations": int(gx_stats.get("unsuccessful_expectations", 0)),
        "success_percent": gx_stats.get("success_percent"),
        "critical_failed": len(critical),
        "warnings": len(warning),
        "rows": int(len(cases)),
        "class_counts": class_counts,
        "min_per_class": int(min_per_class),
        "min_image_side": int(min_image_side),
        "max_image_side": int(max_image_side),
        # the official CBIS-DDSM train/test overlap (31 patients in the real data): reported only
        "patients_in_both_splits": int(df.loc[df["patient_in_both_splits"], "patient_id"].nunique())
        if "patient_id" in df.columns
        else 0,
        "patients_in_train_and_validation": int(
            df.loc[df["patient_in_train_and_validation"], "patient_id"].nunique()
        )
        if "patient_id" in df.columns
        else 0,
        "seconds": round(time.perf_counter() - started, 2),
    }
    summary: dict[str, Any] = {
        "success": not critical,
        "critical_failures": critical,
        "warnings": warning,
        "statistics": statistics,
        "suite_name": spec["name"],
        "suite_meta": spec.get("meta", {}),
        "gx_version": gx.__version__,
        "notes": notes,
    }
    html_path = out_dir / "validation.html"
    html_path.write_text(render_html(summary, results, spec.get("meta", {})), encoding="utf-8")
    (out_dir / "validation_result.json").write_text(
        json.dumps({**summary, "gx_validation_result": raw}, indent=2, default=str), encoding="utf-8"
    )
    for line in critical:
        log.error("critical: %s", line)
    for line in warning:
        log.warning("warning: %s", line)
    log.info(
        "validate_data: %s (%d/%d expectations met, %d critical, %d warnings) in %.1f s",
        "PASSED" if not critical else "FAILED",
        statistics["successful_expectations"],
        statistics["evaluated_expectations"],
        len(critical),
        len(warning),
        statistics["seconds"],
    )
    result = ValidationResult(
        success=not critical,
        critical_failures=critical,
        warnings=warning,
        statistics=statistics,
        html_path=str(html_path),
        docs_dir=str(docs_dir),
    )
    return result


__all__ = [
    "DERIVED_COLUMNS",
    "SUITE_PATH",
    "ValidationResult",
    "ValidationRunError",
    "derive_check_columns",
    "load_suite_spec",
    "render_html",
    "validate_cases",
]
