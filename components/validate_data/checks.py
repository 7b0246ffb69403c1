"""The checks of validate_data: the great-expectations suite over ``cases`` and the group checks.

Two layers, both reported per check with a severity (``critical`` fails the run, ``warning`` is
reported only):

* the **suite** (``expectations.json`` next to this module, versioned with the code): rules on
  rows and columns. Rules that span rows or columns are first computed into boolean / count
  columns (:func:`derive_check_columns`) so that plain column expectations test them and the Data
  Docs show them. The exact column set comes from :data:`contracts.CASE_COLUMNS` plus those derived
  columns, so the schema is declared once.
* **group checks**: rules about a whole class, split or source, which no single row can carry
  (:func:`check_class_coverage`, :func:`check_declared_bit_depth`). They are pure functions over a
  table; :func:`check_class_coverage` and :func:`check_patch_intensity` serve the later steps on
  patches too, where patch intensities and the final splits are known.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np
import pandas as pd

from mammo.components.config import CLASS_NAMES, ValidateConfig
from mammo.components.contracts import CASE_COLUMNS

if TYPE_CHECKING:  # great_expectations is imported lazily: it costs seconds to import
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.data_context import AbstractDataContext

#: the versioned suite (package data)
SUITE_PATH = Path(__file__).with_name("expectations.json")
#: placeholder of the suite's column-set expectation, filled from the contracts at load time
SCHEMA_PLACEHOLDER = "$CASES_SCHEMA"

CRITICAL = "critical"
WARNING = "warning"

#: columns added by :func:`derive_check_columns`
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
#: subsets in which every class must be present (model selection and the test metrics need them)
HELD_OUT_SUBSETS: tuple[str, ...] = ("validation", "test")
#: per-patch intensity statistics (8-bit patch values) that :func:`check_patch_intensity` reads
PATCH_INTENSITY_COLUMNS: tuple[str, ...] = ("intensity_p01", "intensity_p99")
#: image formats whose readers always decode to 8 bits per pixel
EIGHT_BIT_FORMATS: tuple[str, ...] = ("jpeg",)


# -- group checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One failed group check: which check, about what (class / split / source), and what was seen."""

    check: str
    subject: str
    detail: str
    severity: str = CRITICAL

    def __str__(self) -> str:
        return f"{self.check}: {self.subject}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _table(rows: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {missing}; got {sorted(df.columns)}")


def check_class_coverage(
    rows: pd.DataFrame | Iterable[Mapping[str, Any]],
    split_column: str = "subset",
    unit: str = "case",
    splits: Iterable[str] = HELD_OUT_SUBSETS,
) -> list[Failure]:
    """A failure per (class, split) with no row: a class absent from validation or test makes its
    AUC undefined and model selection blind to it.

    ``rows`` needs ``label`` and ``split_column`` (``subset`` in ``cases``; a patch table's
    assigned split in balance_split, with ``unit="patch"``).
    """
    df = _table(rows)
    _require(df, ("label", split_column), "check_class_coverage")
    plural = unit + ("es" if unit.endswith(("s", "ch")) else "s")
    failures = []
    for split in splits:
        counts = df.loc[df[split_column] == split, "label"].value_counts()
        total = int(counts.sum())
        for name in CLASS_NAMES:
            if counts.get(name, 0) == 0:
                failures.append(Failure("class_coverage", f"class {name} in {split}",
                                        f"no {unit} ({total} {plural} of other classes in {split})"))
    return failures


def check_declared_bit_depth(cases: pd.DataFrame) -> list[Failure]:
    """A failure per (class, source) with images whose declared ``bits_stored`` their format cannot
    hold: a JPEG decodes to 8 bits, so scaling it as 12- or 16-bit data makes near-black patches."""
    _require(cases, ("case_id", "label", "source", "image_format", "bits_stored"), "check_declared_bit_depth")
    bits = pd.to_numeric(cases["bits_stored"], errors="coerce")
    bad = cases["image_format"].isin(EIGHT_BIT_FORMATS) & bits.notna() & (bits != 8)
    failures = []
    for (label, source), group in cases.groupby(["label", "source"], dropna=False, sort=True):
        wrong = group[bad.loc[group.index]]
        if len(wrong):
            declared = sorted({int(b) for b in pd.to_numeric(wrong["bits_stored"])})
            failures.append(Failure(
                "intensity", f"class {label}, source {source}",
                f"{len(wrong)} of {len(group)} images are {'/'.join(sorted(set(wrong['image_format'])))} files "
                f"(8 bits per pixel) declaring bits_stored {declared}: their patches would be near-black; "
                f"e.g. {', '.join(map(str, wrong['case_id'].head(3)))}"))
    return failures


def patch_intensity_stats(patch: np.ndarray) -> dict[str, int]:
    """The per-patch statistics of :data:`PATCH_INTENSITY_COLUMNS` for an 8-bit patch (any shape)."""
    p01, p99 = np.percentile(np.asarray(patch), [1, 99])
    return {"intensity_p01": int(round(float(p01))), "intensity_p99": int(round(float(p99)))}


def check_patch_intensity(
    patches: pd.DataFrame | Iterable[Mapping[str, Any]], cfg: ValidateConfig | None = None
) -> list[Failure]:
    """A failure per (class, source) whose patches are too often near-black or saturated.

    ``patches``: a patch manifest or per-patch records with ``label``, ``source`` and the
    :data:`PATCH_INTENSITY_COLUMNS` (from :func:`patch_intensity_stats`); ``scanner`` is named
    in the message when present. A patch is near-black when its 99th percentile is at most
    ``cfg.dark_patch_p99``, saturated when its 1st percentile is at least
    ``cfg.saturated_patch_p01``; a group fails when more than ``cfg.max_bad_patch_fraction`` of
    its patches are either.
    """
    cfg = cfg or ValidateConfig()
    df = _table(patches)
    _require(df, ("label", "source", *PATCH_INTENSITY_COLUMNS), "check_patch_intensity")
    if df.empty:
        return []
    dark = pd.to_numeric(df["intensity_p99"], errors="coerce") <= cfg.dark_patch_p99
    bright = pd.to_numeric(df["intensity_p01"], errors="coerce") >= cfg.saturated_patch_p01
    failures = []
    for (label, source), group in df.groupby(["label", "source"], dropna=False, sort=True):
        n = len(group)
        for flags, what, rule in ((dark, "near-black", f"99th percentile <= {cfg.dark_patch_p99}"),
                                  (bright, "saturated", f"1st percentile >= {cfg.saturated_patch_p01}")):
            bad = group[flags.loc[group.index]]
            if len(bad) > cfg.max_bad_patch_fraction * n:
                scanners = ""
                if "scanner" in bad.columns:
                    names = sorted({str(s) or "(unknown)" for s in bad["scanner"].fillna("")})
                    scanners = f"; scanner(s) {', '.join(names)}"
                failures.append(Failure(
                    "patch_intensity", f"class {label}, source {source}",
                    f"{len(bad)} of {n} patches are {what} ({rule}; at most "
                    f"{cfg.max_bad_patch_fraction:.0%} allowed){scanners}"))
    return failures


def check_patches(
    patches: pd.DataFrame | Iterable[Mapping[str, Any]], cfg: ValidateConfig, split_column: str = "assigned_split"
) -> list[Failure]:
    """The group checks on the joined patch manifest (balance_split): every class has a patch in
    validation and test, and no class or source has near-black or saturated patches. Rows with an
    empty split (patients dropped from train/validation) do not count toward coverage."""
    df = _table(patches)
    return (check_class_coverage(df[df[split_column].astype(str) != ""], split_column=split_column, unit="patch")
            + check_patch_intensity(df, cfg))


def group_checks(cases: pd.DataFrame) -> list[Failure]:
    """The group checks that ``cases`` alone can answer (columns it lacks are left to the suite)."""
    failures: list[Failure] = []
    if {"label", "subset"} <= set(cases.columns):
        failures += check_class_coverage(cases)
    if {"label", "source", "image_format", "bits_stored", "case_id"} <= set(cases.columns):
        failures += check_declared_bit_depth(cases)
    return failures


# -- derived check columns -------------------------------------------------------------------------


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


# -- the suite -------------------------------------------------------------------------------------


def suite_key(expectation: dict[str, Any]) -> tuple[str, str]:
    """(type, column): identifies an expectation of this suite (table expectations have no column)."""
    return expectation["type"], str(expectation["kwargs"].get("column", ""))


def load_suite_spec(path: str | Path = SUITE_PATH) -> dict[str, Any]:
    """The suite as stored (name, meta, expectations with ``meta.severity``), with the column set
    filled in from the contracts.

    Raises ValueError when an expectation lacks a valid severity or two share a type and column
    (GX would silently merge them: it upserts expectations by domain).
    """
    spec = json.loads(Path(path).read_text())
    seen: set[tuple[str, str]] = set()
    for i, exp in enumerate(spec["expectations"]):
        severity = exp.get("meta", {}).get("severity")
        if severity not in (CRITICAL, WARNING):
            raise ValueError(f"{path}: expectation {i} ({exp.get('type')}) has no valid meta.severity: {severity!r}")
        if suite_key(exp) in seen:
            raise ValueError(f"{path}: expectation {i} repeats {suite_key(exp)}")
        seen.add(suite_key(exp))
        if exp["kwargs"].get("column_set") == SCHEMA_PLACEHOLDER:
            exp["kwargs"]["column_set"] = list(CASE_COLUMNS) + list(DERIVED_COLUMNS)
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
    """An ephemeral GX context whose only on-disk part is the Data Docs site in ``docs_dir``
    (analytics and progress bars off: nothing is written elsewhere, nothing is sent out)."""
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


def run_suite(df: pd.DataFrame, spec: dict[str, Any], parameters: dict[str, int], docs_dir: Path) -> dict[str, Any]:
    """Validate ``df`` (with the derived columns) through a Checkpoint that also builds the Data Docs.

    Returns the GX ExpectationSuiteValidationResult as a JSON-able dict, its results in suite order.
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
    raw = validation_result.to_json_dict()
    # GX returns results grouped by its metric graph, not in suite order: restore the suite order
    position = {suite_key(exp): i for i, exp in enumerate(spec["expectations"])}
    raw["results"] = sorted(raw["results"], key=lambda r: position.get(suite_key(r["expectation_config"]), len(position)))
    return raw


# -- reading a suite result ------------------------------------------------------------------------


def short(value: Any, limit: int = 80) -> str:
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


def table_notes(df: pd.DataFrame, class_counts: dict[str, int], min_per_class: int) -> dict[str, str]:
    """Whole-table explanations for derived columns whose failing rows stand for a group.

    ``class_count`` fails row by row although a class is short, and the patient-overlap columns
    flag rows although patients overlap: for those, report the classes / patients instead.
    """
    notes: dict[str, str] = {}
    short_classes = [f"{name}={class_counts.get(name, 0)}" for name in CLASS_NAMES
                     if class_counts.get(name, 0) < min_per_class]
    if short_classes:
        notes["class_count"] = f"classes below min_per_class={min_per_class}: " + ", ".join(short_classes)
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


def observed(entry: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """What the data showed, in one line: unexpected values and sample rows, or the observed value.

    ``notes`` (by column, see :func:`table_notes`) replace the row-level detail of a failed
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
        parts = [f"{k} columns {short(sorted(v), 200)}" for k, v in mismatched.items() if v]
        return "; ".join(parts) or "column set differs"
    if "unexpected_count" in res:
        n, total = res.get("unexpected_count") or 0, res.get("element_count") or 0
        text = f"{n} of {total} rows unexpected"
        if res.get("missing_count"):
            text += f" ({res['missing_count']} null, ignored)"
        counts = res.get("partial_unexpected_counts") or []
        if counts:
            text += "; values " + ", ".join(f"{short(c['value'], 40)} (x{c['count']})" for c in counts[:5])
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
        return f"{res.get('missing_count', '')} missing: {short(sorted(res['partial_missing_list'], key=str), 200)}"
    return f"observed {short(res.get('observed_value'), 200)}"


def parameters_text(kwargs: dict[str, Any], limit: int = 120) -> str:
    """The expectation's arguments other than its column (and GX's batch id); long lists abridged."""
    shown = {k: v for k, v in kwargs.items() if k not in ("batch_id", "column", "column_list", "condition_parser")}
    parts = []
    for k, v in shown.items():
        text = short(v, limit)
        if isinstance(v, list) and text.endswith("..."):
            text = f"[{len(v)} values]"
        parts.append(f"{k}={text}")
    return ", ".join(parts)


def target(kwargs: dict[str, Any]) -> str:
    """The column(s) an expectation is about, or ``(table)``."""
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_list" in kwargs:
        return "(" + ", ".join(map(str, kwargs["column_list"])) + ")"
    return "(table)"


def failure_line(entry: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """``<expectation> on <column> [<parameters>]: <what failed>``."""
    config = entry["expectation_config"]
    params = parameters_text(config["kwargs"])
    head = f"{config['type']} on {target(config['kwargs'])}" + (f" [{params}]" if params else "")
    return f"{head}: {observed(entry, notes)}"


def severity(entry: dict[str, Any]) -> str:
    """An expectation result's severity; a failure without a known one fails the run (fail safe)."""
    return (entry["expectation_config"].get("meta") or {}).get("severity", CRITICAL)


def class_counts(df: pd.DataFrame, by: str | None = None) -> dict[str, Any]:
    """Rows per class (every class named, zeros included), or ``{value of by: rows per class}``."""
    if "label" not in df.columns:
        return {}
    if by is not None:
        if by not in df.columns:
            return {}
        return {str(k): class_counts(g) for k, g in df.groupby(by, dropna=True, sort=True)}
    counts = df["label"].value_counts(dropna=True)
    names = list(CLASS_NAMES) + sorted(str(k) for k in counts.index if k not in CLASS_NAMES)
    return {name: int(counts.get(name, 0)) for name in names}
