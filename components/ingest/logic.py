"""Ingest: CBIS-DDSM case-description CSVs + image tree + DDSM normals -> ``cases``, ``rejects``, ``skipped``.

:func:`run` is the step (the KFP component and ``mammo ingest`` both call it). Sources are a local
folder or ``gs://bucket/prefix``, both through :mod:`mammo.components.storage` (one listing of each
tree, ranged and bounded header reads, retries), so there is one code path. The pieces:
:mod:`~mammo.components.headers` (the one header reader), :mod:`.tree` (listing index and path
resolution), :mod:`.cbis` (row rules), :mod:`.normals` (the normals folder), :mod:`.tables` (CSVs).

**Nothing lost**: every input row ends in ``cases`` or in ``rejects`` (reason code + message naming
the file and row); every file of the normals folder is a case, a reject or in ``skipped`` (with a
reason); ``report.json`` lists every input file, even one with 0 rows, with ``read = ingested +
rejected``. An input file that cannot be used as a whole (not UTF-8, an unclosed quote, empty, a
required column missing) is one ``rejects`` row with ``source_row`` 0, counted as all its rows
rejected. The step fails after writing every table when such a file exists or more than
``ingest.max_reject_fraction`` of any input's rows are rejected.

**PHI**: only technical header values leave the step (rows, columns, bits stored, photometric
interpretation, pixel spacing, modality, manufacturer); study / series UIDs are used for resolution
only; no other header value is stored, logged or reported.

**Split**: ``split`` is the official CBIS-DDSM split (a patient-hash split for the normals);
``subset`` further divides the official training rows into ``train`` / ``validation`` by patient,
stratified by class (``balance.validation_fraction``), so validation can prove no patient is in both.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mammo.components import contracts, storage
from mammo.components.config import CLASS_NAMES, Config
from mammo.components.contracts import CASE_COLUMNS, NULLABLE_INT_COLUMNS, REJECT_COLUMNS, SKIPPED_COLUMNS
from mammo.components.ingest import cbis, normals
from mammo.components.ingest.reasons import (
    DUPLICATE,
    MALFORMED_ROW,
    IngestError,
    RowRejected,
)
from mammo.components.ingest.tables import BadRow, CsvError, read_case_csv, read_csv
from mammo.components.ingest.tree import HeaderCache, TreeIndex
from mammo.components.splits import patient_split
from mammo.components.storage import Entry

log = logging.getLogger(__name__)

CSV_FILES = contracts.CBIS_CSVS
_LOGGED_PER_REASON = 20

__all__ = ["CSV_FILES", "IngestError", "IngestReport", "SourceCounts",
           "assign_subsets", "read_case_csv", "run"]


@dataclass
class SourceCounts:
    read: int = 0
    ingested: int = 0
    rejected: int = 0
    #: why the whole file could not be used ("" if it could)
    error: str = ""


@dataclass
class IngestReport:
    #: every input file (the four CSVs and the normals), even with 0 rows
    counts: dict[str, SourceCounts] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    #: files of the normals folder that are not cases, per reason
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    #: files of the data root the listing refused (links out of the root, FIFOs, devices), per reason
    refused_files: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, int] = field(default_factory=dict)
    #: where the cases' pixel spacing came from: {source: {dicom:... | ddsm_ics | manifest | default:...: cases}}
    pixel_spacing_sources: dict[str, dict[str, int]] = field(default_factory=dict)
    #: rows (CBIS-DDSM) resolved per method: metadata.csv, dicom_info.csv, uid_folder, nbia_names, dicom_header
    resolution: dict[str, int] = field(default_factory=dict)
    #: image headers read (each once; a few KB each on GCS)
    header_reads: int = 0
    #: layout notes (e.g. "NBIA metadata.csv used", "JPEG release")
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rows_per_s: float = 0.0
    cases_path: str = ""
    rejects_path: str = ""
    skipped_path: str = ""

    @property
    def totals(self) -> SourceCounts:
        total = SourceCounts()
        for c in self.counts.values():
            total.read += c.read
            total.ingested += c.ingested
            total.rejected += c.rejected
        return total

    def to_dict(self) -> dict:
        data = asdict(self)
        data["totals"] = asdict(self.totals)
        del data["totals"]["error"]
        return data


def assign_subsets(cases: pd.DataFrame, validation_fraction: float, seed: int) -> pd.Series:
    """The ``subset`` column: see :func:`mammo.components.splits.patient_split`."""
    return patient_split(cases, validation_fraction, seed)


def _find_csvs(files: dict[str, Entry], root: str) -> dict[str, Entry]:
    """The four case-description CSVs at the root or in ``csv/`` (the JPEG release)."""
    found, missing = {}, []
    for name in CSV_FILES:
        entry = files.get(name) or files.get(f"csv/{name}")
        if entry is None:
            missing.append(name)
        else:
            found[name] = entry
    if missing:
        raise IngestError(f"{root}: missing case-description CSV(s) {missing} (looked in the root and in csv/)")
    return found


def _read_cbis_csv(name: str, entry: Entry) -> list[tuple[int, Any]]:
    """(row number, Plan or RowRejected) per data row; raises :class:`CsvError` for the whole file."""
    if entry.problem:
        raise CsvError(entry.problem, f"{entry.rel}: {entry.detail or entry.problem}; not read")
    table = read_csv(entry, cbis.REQUIRED_COLUMNS)
    log.info("reading %s: %d rows", entry.rel, len(table.rows))
    out: list[tuple[int, Any]] = []
    for i, row in enumerate(table.rows, start=1):  # source_row: 1-based data row
        try:
            if isinstance(row, BadRow):
                raise RowRejected(MALFORMED_ROW, row.message)
            out.append((i, cbis.plan_row(row, name, i)))
        except RowRejected as rej:
            out.append((i, rej))
    return out


def _write_table(df: pd.DataFrame, uri: str) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    storage.write_bytes(uri, buf.getvalue())


def _write_report(out_dir: str, data: dict) -> None:
    if storage.is_gcs(out_dir):
        storage.write_text(storage.join(out_dir, contracts.REPORT_JSON),
                           json.dumps({"step": "ingest", **data}, indent=2, default=str))
    else:
        contracts.write_report(Path(out_dir), "ingest", data)


def run(data_uri: str | Any, normals_uri: str | Any, out_dir: str | Any, cfg: Config) -> IngestReport:
    """Read the CBIS-DDSM CSVs and images (under ``data_uri``) and the normals; write the tables.

    ``data_uri`` / ``normals_uri`` / ``out_dir`` are local folders or ``gs://bucket/prefix``.
    Writes ``cases``, ``rejects``, ``skipped`` (Parquet) and ``report.json`` into ``out_dir``.
    Raises :class:`IngestError` when an input is missing, unreadable as a whole, or more than
    ``cfg.ingest.max_reject_fraction`` of any input's rows are rejected (after writing the tables,
    so they can be inspected).
    """
    started = time.perf_counter()
    icfg = cfg.ingest
    tolerance, spacing_defaults = cfg.patches.mask_rescale_tolerance, cfg.patches.spacing_defaults()
    data_root, normals_root = storage.normalize_root(data_uri), storage.normalize_root(normals_uri)
    out_dir = storage.normalize_root(out_dir)
    cache = HeaderCache(icfg.io_workers)
    report = IngestReport()

    data_entries = storage.scan_files(data_root)
    csvs = _find_csvs({e.rel: e for e in data_entries}, data_root)
    normal_entries = storage.scan_files(normals_root)
    if not normal_entries:
        raise IngestError(f"normals folder {normals_root} does not exist or is empty")
    report.refused_files = dict(Counter(e.problem for e in data_entries if e.problem))
    index = TreeIndex(data_root, data_entries, cache)
    report.notes.extend(index.notes)
    if index.skipped_locations:
        report.notes.append(f"{index.skipped_locations} metadata.csv / dicom_info.csv locations outside the root ignored")

    # outcome per input row, in input order: a Plan or a RowRejected; whole-file errors apart
    outcomes: list[tuple[str, int, Any]] = []
    file_errors: dict[str, CsvError] = {}
    for name in CSV_FILES:
        report.counts[name] = SourceCounts()
        try:
            rows = _read_cbis_csv(name, csvs[name])
        except CsvError as exc:
            file_errors[name] = exc
            continue
        for i, outcome in rows:
            if isinstance(outcome, cbis.Plan):
                cbis.resolve(outcome, index)
            outcomes.append((name, i, outcome))
    plans = [o for _, _, o in outcomes if isinstance(o, cbis.Plan)]

    # rows whose files no name or listing gave: read the headers of the DICOM files nobody claimed
    pending = [p for p in plans if p.missing()]
    if pending and icfg.resolve_by_header:
        if index.build_header_index():
            for p in pending:
                cbis.resolve(p, index)
            report.notes.append(f"{sum(not p.missing() for p in pending)} rows resolved by DICOM headers")
    # every header needed, fetched once and concurrently
    cache.fetch(e for p in plans if not p.missing() for e in cbis.header_entries(p))

    found = normals.normal_inputs(normals_root, normal_entries)
    report.counts[found.source] = SourceCounts()
    if found.error is not None:
        file_errors[found.source] = found.error
    log.info("reading normals from %s: %d images, %d files skipped", found.source, len(found.rows), len(found.skipped))
    normal_plans: list[tuple[int, dict, Entry | RowRejected]] = []
    for i, row in found.rows:
        try:
            normal_plans.append((i, row, normals.plan_normal(row, found.files)))
        except RowRejected as rej:
            normal_plans.append((i, row, rej))
    cache.fetch(e for _, _, e in normal_plans if isinstance(e, Entry))

    cases: list[dict] = []
    rejects: list[dict] = []
    seen_ids: dict[str, str] = {}
    seen_keys: dict[tuple, str] = {}
    logged: Counter = Counter()
    resolution: Counter = Counter()

    def reject(source: str, row_no: int, case_id: str, rej: RowRejected | CsvError) -> None:
        rejects.append({"source_file": source, "source_row": row_no, "case_id": case_id,
                        "reason": rej.reason, "message": rej.message})
        logged[rej.reason] += 1
        level = logging.WARNING if logged[rej.reason] <= _LOGGED_PER_REASON else logging.DEBUG
        log.log(level, "reject %s row %d: %s: %s", source, row_no, rej.reason, rej.message)

    def record(source: str, row_no: int, make: Callable[[], dict], case_id: str = "") -> bool:
        """Count one input row; it becomes a case or a reject. True if ingested."""
        counts = report.counts[source]
        counts.read += 1
        try:
            case = make()
            key = (case["patient_id"], case["side"], case["view"], case["abnormality_id"])
            earlier = seen_ids.get(case["case_id"]) or seen_keys.get(key)
            if earlier:
                raise RowRejected(DUPLICATE, f"case {case['case_id']} (patient/side/view/abnormality "
                                             f"{'/'.join(map(str, key))}) already ingested from {earlier}")
            seen_ids[case["case_id"]] = seen_keys[key] = f"{source} row {row_no}"
            cases.append(case)
            counts.ingested += 1
            return True
        except RowRejected as rej:
            counts.rejected += 1
            reject(source, row_no, case_id, rej)
            return False

    def _raise(rej: RowRejected) -> dict:
        raise rej

    for source, row_no, outcome in outcomes:
        if isinstance(outcome, RowRejected):
            record(source, row_no, lambda rej=outcome: _raise(rej))
        elif record(source, row_no, lambda plan=outcome: cbis.abnormal_case(plan, cache, tolerance, spacing_defaults),
                    outcome.fields["case_id"]):
            resolution[outcome.found["image"][1]] += 1
    for i, row, outcome in normal_plans:
        if isinstance(outcome, RowRejected):
            record(found.source, i, lambda rej=outcome: _raise(rej))
        else:
            record(found.source, i, lambda row=row, e=outcome, i=i: normals.normal_case(
                row, e, cache, icfg.normal_test_fraction, found.source, i, spacing_defaults))
    for source, exc in file_errors.items():  # one reject per unusable file, counted as all its rows
        report.counts[source] = SourceCounts(read=exc.rows, rejected=exc.rows, error=exc.message)
        reject(source, 0, "", exc)

    cases_df = pd.DataFrame(cases, columns=CASE_COLUMNS)
    for col in NULLABLE_INT_COLUMNS:
        cases_df[col] = cases_df[col].astype("Int64")
    cases_df["pixel_spacing_mm"] = cases_df["pixel_spacing_mm"].astype("float64")
    if len(cases_df):
        cases_df["subset"] = assign_subsets(cases_df, cfg.balance.validation_fraction, cfg.seed)
    rejects_df = pd.DataFrame(rejects, columns=REJECT_COLUMNS)
    skipped_df = pd.DataFrame(found.skipped, columns=SKIPPED_COLUMNS)

    report.cases_path = storage.join(out_dir, contracts.CASES)
    report.rejects_path = storage.join(out_dir, contracts.REJECTS)
    report.skipped_path = storage.join(out_dir, contracts.SKIPPED)
    for df, uri in ((cases_df, report.cases_path), (rejects_df, report.rejects_path), (skipped_df, report.skipped_path)):
        _write_table(df, uri)
    report.reject_reasons = dict(Counter(r["reason"] for r in rejects))
    report.skipped_reasons = dict(Counter(s["reason"] for s in found.skipped))
    report.per_class = {c: int((cases_df["label"] == c).sum()) for c in CLASS_NAMES}
    for c in cases:
        by_source = report.pixel_spacing_sources.setdefault(c["source"], {})
        by_source[c["pixel_spacing_source"]] = by_source.get(c["pixel_spacing_source"], 0) + 1
    report.resolution = dict(resolution)
    report.header_reads = cache.reads
    report.seconds = round(time.perf_counter() - started, 3)
    report.rows_per_s = round(report.totals.read / report.seconds, 1) if report.seconds else 0.0
    _write_report(out_dir, report.to_dict())

    for source, c in report.counts.items():
        log.info("%s: read %d = ingested %d + rejected %d%s", source, c.read, c.ingested, c.rejected,
                 f" ({c.error})" if c.error else "")
    log.info("ingest: %d cases, %d rejects %s, %d skipped %s, resolved by %s, %d headers read, %.1f s",
             len(cases_df), len(rejects_df), report.reject_reasons, len(skipped_df), report.skipped_reasons,
             report.resolution, report.header_reads, report.seconds)
    if file_errors:
        raise IngestError("unusable input file(s): " + "; ".join(e.message for e in file_errors.values())
                          + f" (see {report.rejects_path})")
    too_many = {s: c for s, c in report.counts.items() if c.read and c.rejected / c.read > icfg.max_reject_fraction}
    if too_many:
        detail = "; ".join(
            f"{s}: {c.rejected}/{c.read} rejected ("
            + ", ".join(f"{r} {n}" for r, n in Counter(x["reason"] for x in rejects if x["source_file"] == s).most_common(3))
            + ")"
            for s, c in too_many.items()
        )
        raise IngestError(
            f"reject fraction above ingest.max_reject_fraction={icfg.max_reject_fraction}: {detail} "
            f"(see {report.rejects_path})"
        )
    return report

