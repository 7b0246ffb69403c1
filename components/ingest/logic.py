"""Ingest: CBIS-DDSM case-description CSVs + NBIA DICOM tree + DDSM normals -> ``cases`` and ``rejects``.

Every input row ends either in ``cases`` (one row per abnormality, or per normal image) or in
``rejects`` with a reason code and a message naming the file and row; the report says, per input,
``read = ingested + rejected``. Quirks handled here (ARCHITECTURE.md section 5):

* mass CSVs say ``breast_density``, calc CSVs ``breast density``: both map to ``breast_density``;
* cells (and headers) carry stray whitespace and embedded newlines: every cell is stripped;
* CSV paths (``<folder>/<StudyUID>/<SeriesUID>/000000.dcm``) do not exist in an NBIA download,
  which lays files out as ``<folder>/<date>-DDSM[-NA]-<study5>/<n>-<description>-<series5>/1-N.dcm``:
  paths are resolved through an index of the tree built once, keyed by folder and the last five
  digits of the study and series UIDs (the literal CSV layout is indexed the same way);
* cropped image and ROI mask share a series and the CSV swaps them in many rows: the mask is the
  file with the full image's size, whatever the CSV calls it;
* ``BENIGN_WITHOUT_CALLBACK`` counts as benign.

Only technical DICOM attributes are read (via :func:`mammo.components.imaging.dicom_info`); no
patient-identifying header value is ever stored, logged or reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from mammo.components.config import CLASS_NAMES, IngestConfig
from mammo.components.imaging import ImageInfo, dicom_info

log = logging.getLogger(__name__)

CSV_FILES = (
    "mass_case_description_train_set.csv",
    "mass_case_description_test_set.csv",
    "calc_case_description_train_set.csv",
    "calc_case_description_test_set.csv",
)

#: reason codes of the rejects table
MISSING_FILE = "missing_file"
UNREADABLE_DICOM = "unreadable_dicom"
MASK_SIZE_MISMATCH = "mask_size_mismatch"
UNKNOWN_LABEL = "unknown_label"
DUPLICATE = "duplicate"
PATH_OUTSIDE_ROOT = "path_outside_root"
BAD_VALUE = "bad_value"

PATHOLOGY = {"BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign", "MALIGNANT": "malignant"}
ABNORMALITY = {"mass": "mass", "calcification": "calcification"}
LABEL_PREFIX = {"mass": "mass", "calcification": "calc"}
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".tif", ".tiff")

#: the columns of ``cases``, in order (the validation suite checks exactly this set)
CASE_COLUMNS = [
    "case_id", "patient_id", "label", "label_index", "abnormality_type", "pathology", "split",
    "side", "view", "abnormality_id", "breast_density", "assessment", "subtlety", "mass_shape",
    "mass_margins", "calc_type", "calc_distribution", "image_uri", "roi_mask_uri", "cropped_uri",
    "image_rows", "image_cols", "mask_rows", "mask_cols", "bits_stored", "photometric", "source",
    "scanner", "source_file", "source_row",
]
REJECT_COLUMNS = ["source_file", "source_row", "case_id", "reason", "message"]
NULLABLE_INT = ["breast_density", "assessment", "subtlety", "mask_rows", "mask_cols"]


class IngestError(RuntimeError):
    """Ingest could not produce a trustworthy ``cases`` table (message says which input and why)."""


class RowRejected(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class SourceCounts:
    read: int = 0
    ingested: int = 0
    rejected: int = 0


@dataclass
class IngestReport:
    counts: dict[str, SourceCounts] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, int] = field(default_factory=dict)
    cases_path: str = ""
    rejects_path: str = ""

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
        return data


# -- the tree index ------------------------------------------------------------------------------

_TRAILING_DIGITS = re.compile(r"(\d+)$")


def _uid_key(name: str) -> str | None:
    """Last five digits of a study/series directory name (NBIA) or of a full UID (CSV layout)."""
    m = _TRAILING_DIGITS.search(name)
    return m.group(1)[-5:] if m else None


class TreeIndex:
    """All image files under a root, indexed once by (folder, study5, series5)."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.series: dict[tuple[str, str, str], list[Path]] = defaultdict(list)
        base = self.root / "CBIS-DDSM" if (self.root / "CBIS-DDSM").is_dir() else self.root
        n = 0
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(base).parts
            if len(rel) != 3:
                continue
            folder, study, series = rel
            s5, r5 = _uid_key(study), _uid_key(series)
            if s5 is None or r5 is None:
                continue
            for f in sorted(files):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    self.series[(folder, s5, r5)].append(Path(dirpath) / f)
                    n += 1
        log.info("indexed %d image files in %d series under %s", n, len(self.series), base)

    def lookup(self, csv_path: str) -> list[Path]:
        """Files of the series a CSV path names (``folder/StudyUID/SeriesUID/file``)."""
        parts = PurePosixPath(csv_path).parts
        if len(parts) != 4:
            raise RowRejected(MISSING_FILE, f"path {csv_path!r} is not of the form folder/StudyUID/SeriesUID/file")
        folder, study, series, _ = parts
        key = (folder, _uid_key(study) or "", _uid_key(series) or "")
        files = self.series.get(key)
        if not files:
            raise RowRejected(MISSING_FILE, f"no files for {csv_path!r} (looked for {folder}/*-{key[1]}/*-{key[2]}/)")
        return files


def check_inside_root(csv_path: str) -> None:
    """A CSV path must be relative and must not climb out of the data root."""
    p = PurePosixPath(csv_path.replace("\\", "/"))
    if p.is_absolute() or csv_path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", csv_path) or ".." in p.parts:
        raise RowRejected(PATH_OUTSIDE_ROOT, f"path {csv_path!r} is absolute or leaves the data root")


# -- reading -------------------------------------------------------------------------------------


def read_case_csv(path: Path) -> pd.DataFrame:
    """A case-description CSV with every header and cell stripped, all values as strings."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip())


def _info(path: Path, what: str) -> ImageInfo:
    try:
        return dicom_info(path)
    except Exception as exc:  # pydicom raises several types for broken files
        raise RowRejected(UNREADABLE_DICOM, f"{what} {path.name} is not a readable DICOM: {type(exc).__name__}") from None


def _optional_int(value: str) -> int | None:
    try:
        return int(float(value)) if value not in ("", None) else None
    except ValueError:
        return None


def _abnormal_case(row: pd.Series, index: TreeIndex, source_file: str, source_row: int) -> dict:
    for col in ("image file path", "cropped image file path", "ROI mask file path"):
        if not row.get(col):
            raise RowRejected(BAD_VALUE, f"column {col!r} is empty")
        check_inside_root(row[col])
    abn_type = ABNORMALITY.get(row.get("abnormality type", "").lower())
    pathology = PATHOLOGY.get(row.get("pathology", "").upper())
    if abn_type is None or pathology is None:
        raise RowRejected(
            UNKNOWN_LABEL,
            f"unknown label values abnormality type={row.get('abnormality type')!r} pathology={row.get('pathology')!r}",
        )
    side, view = row.get("left or right breast", "").upper(), row.get("image view", "").upper()
    if side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
        raise RowRejected(BAD_VALUE, f"side/view {side!r}/{view!r} not in LEFT/RIGHT x CC/MLO")
    abn_id = _optional_int(row.get("abnormality id", ""))
    if abn_id is None or abn_id < 1:
        raise RowRejected(BAD_VALUE, f"abnormality id {row.get('abnormality id')!r} is not a positive integer")

    full_files = index.lookup(row["image file path"])
    full_path = full_files[0]
    full = _info(full_path, "full image")
    # crop and mask share a series; the CSV's two columns may name either, so use both series
    candidates = sorted(set(index.lookup(row["ROI mask file path"])) | set(index.lookup(row["cropped image file path"])))
    infos = [(p, _info(p, "ROI/crop file")) for p in candidates]
    masks = [(p, i) for p, i in infos if (i.rows, i.cols) == (full.rows, full.cols)]
    if not masks:
        sizes = ", ".join(f"{p.name}={i.rows}x{i.cols}" for p, i in infos)
        raise RowRejected(
            MASK_SIZE_MISMATCH, f"no ROI mask with the full image's size {full.rows}x{full.cols} (found {sizes})"
        )
    mask_path, mask = masks[0]
    crops = [p for p, _ in infos if p != mask_path]
    folder = PurePosixPath(row["image file path"]).parts[0]
    split = "test" if "-Test" in folder else "train"
    label = f"{LABEL_PREFIX[abn_type]}_{pathology}"
    return {
        "case_id": f"{folder}_{abn_id}",
        "patient_id": row["patient_id"],
        "label": label,
        "label_index": CLASS_NAMES.index(label),
        "abnormality_type": abn_type,
        "pathology": pathology,
        "split": split,
        "side": side,
        "view": view,
        "abnormality_id": abn_id,
        "breast_density": _optional_int(row.get("breast_density", row.get("breast density", ""))),
        "assessment": _optional_int(row.get("assessment", "")),
        "subtlety": _optional_int(row.get("subtlety", "")),
        "mass_shape": row.get("mass shape") or None,
        "mass_margins": row.get("mass margins") or None,
        "calc_type": row.get("calc type") or None,
        "calc_distribution": row.get("calc distribution") or None,
        "image_uri": str(full_path),
        "roi_mask_uri": str(mask_path),
        "cropped_uri": str(crops[0]) if crops else "",
        "image_rows": full.rows,
        "image_cols": full.cols,
        "mask_rows": mask.rows,
        "mask_cols": mask.cols,
        "bits_stored": full.bits_stored,
        "photometric": full.photometric,
        "source": "cbis-ddsm",
        "scanner": full.manufacturer,
        "source_file": source_file,
        "source_row": source_row,
    }


_NORMAL_NAME = re.compile(r"^(?P<patient>.+?)_(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)\.[A-Za-z]+$", re.IGNORECASE)


def _normal_split(patient_id: str, test_fraction: float) -> str:
    """Deterministic patient-level split of the normals (stable across runs and machines)."""
    h = int(hashlib.sha256(patient_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_fraction else "train"


def _normal_rows(normals_root: Path) -> tuple[str, list[dict]]:
    """(source name, rows) of the normals: from ``manifest.csv`` if present, else by scanning."""
    manifest = normals_root / "manifest.csv"
    if manifest.exists():
        df = read_case_csv(manifest)
        return "manifest.csv", [dict(r) for _, r in df.iterrows()]
    rows = []
    for p in sorted(normals_root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            m = _NORMAL_NAME.match(p.name)
            rows.append(
                {
                    "patient_id": m["patient"] if m else "",
                    "side": m["side"].upper() if m else "",
                    "view": m["view"].upper() if m else "",
                    "path": str(p.relative_to(normals_root)),
                    "scanner": "",
                    "bits_stored": "",
                }
            )
    return normals_root.name + "/", rows


def _normal_case(row: dict, normals_root: Path, cfg: IngestConfig, source_file: str, source_row: int) -> dict:
    rel = row.get("path", "")
    if not rel:
        raise RowRejected(BAD_VALUE, "empty path")
    check_inside_root(rel)
    patient, side, view = row.get("patient_id", ""), row.get("side", "").upper(), row.get("view", "").upper()
    if not patient or side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
        raise RowRejected(
            BAD_VALUE, f"cannot tell patient/side/view of {rel!r} (expected <patient>_<LEFT|RIGHT>_<CC|MLO>.dcm)"
        )
    path = normals_root / rel
    if not path.is_file():
        raise RowRejected(MISSING_FILE, f"normal image {rel!r} does not exist")
    if path.suffix.lower() in (".dcm", ".dicom"):
        info = _info(path, "normal image")
    else:
        from mammo.components.imaging import read_image

        try:
            pixels, info = read_image(path)
        except Exception as exc:
            raise RowRejected(UNREADABLE_DICOM, f"normal image {rel!r} unreadable: {type(exc).__name__}") from None
    bits = _optional_int(str(row.get("bits_stored", ""))) or info.bits_stored
    return {
        "case_id": f"Normal_{patient}_{side}_{view}",
        "patient_id": patient,
        "label": "normal",
        "label_index": CLASS_NAMES.index("normal"),
        "abnormality_type": "normal",
        "pathology": "normal",
        "split": _normal_split(patient, cfg.normal_test_fraction),
        "side": side,
        "view": view,
        "abnormality_id": 0,
        "breast_density": None,
        "assessment": None,
        "subtlety": None,
        "mass_shape": None,
        "mass_margins": None,
        "calc_type": None,
        "calc_distribution": None,
        "image_uri": str(path.resolve()),
        "roi_mask_uri": "",
        "cropped_uri": "",
        "image_rows": info.rows,
        "image_cols": info.cols,
        "mask_rows": None,
        "mask_cols": None,
        "bits_stored": bits,
        "photometric": info.photometric,
        "source": "ddsm-normal",
        "scanner": (row.get("scanner") or info.manufacturer or "").upper(),
        "source_file": source_file,
        "source_row": source_row,
    }


# -- the step ------------------------------------------------------------------------------------


def ingest(data_root: str | Path, normals_root: str | Path, out_dir: str | Path, cfg: IngestConfig) -> IngestReport:
    """Read the CBIS-DDSM CSVs (under ``data_root``) and the normals; write cases/rejects Parquet.

    Writes ``cases.parquet``, ``rejects.parquet`` and ``report.json`` into ``out_dir``. Raises
    :class:`IngestError` when an input is missing or more than ``cfg.max_reject_fraction`` of any
    input's rows are rejected (after writing the tables, so the rejects can be inspected).
    """
    data_root, normals_root, out_dir = Path(data_root), Path(normals_root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_dir = data_root
    missing = [f for f in CSV_FILES if not (csv_dir / f).exists()]
    if missing:
        raise IngestError(f"{data_root}: missing case-description CSV(s) {missing}")
    if not normals_root.is_dir():
        raise IngestError(f"normals folder {normals_root} does not exist")

    index = TreeIndex(data_root)
    cases: list[dict] = []
    rejects: list[dict] = []
    report = IngestReport()
    seen: set[str] = set()

    def record(source: str, row_no: int, make) -> None:
        counts = report.counts.setdefault(source, SourceCounts())
        counts.read += 1
        try:
            case = make()
            if case["case_id"] in seen:
                raise RowRejected(DUPLICATE, f"case {case['case_id']} already ingested from an earlier row")
            seen.add(case["case_id"])
            cases.append(case)
            counts.ingested += 1
        except RowRejected as rej:
            counts.rejected += 1
            rejects.append(
                {"source_file": source, "source_row": row_no, "case_id": "", "reason": rej.reason, "message": rej.message}
            )
            log.warning("reject %s row %d: %s: %s", source, row_no, rej.reason, rej.message)

    for name in CSV_FILES:
        df = read_case_csv(csv_dir / name)
        log.info("reading %s: %d rows", name, len(df))
        for i, (_, row) in enumerate(df.iterrows(), start=1):
            # source_row = 1-based data row (the header is row 0)
            record(name, i, lambda row=row, i=i: _abnormal_case(row, index, name, i))

    normal_source, normal_rows = _normal_rows(normals_root)
    log.info("reading normals from %s: %d images", normal_source, len(normal_rows))
    for i, row in enumerate(normal_rows, start=1):
        record(normal_source, i, lambda row=row, i=i: _normal_case(row, normals_root, cfg, normal_source, i))

    cases_df = pd.DataFrame(cases, columns=CASE_COLUMNS)
    for col in NULLABLE_INT:
        cases_df[col] = cases_df[col].astype("Int64")
    rejects_df = pd.DataFrame(rejects, columns=REJECT_COLUMNS)
    report.cases_path = str(out_dir / "cases.parquet")
    report.rejects_path = str(out_dir / "rejects.parquet")
    cases_df.to_parquet(report.cases_path, index=False)
    rejects_df.to_parquet(report.rejects_path, index=False)
    report.reject_reasons = dict(Counter(r["reason"] for r in rejects))
    report.per_class = {c: int((cases_df["label"] == c).sum()) for c in CLASS_NAMES}
    (out_dir / "report.json").write_text(json.dumps({"step": "ingest", **report.to_dict()}, indent=2))

    for source, c in report.counts.items():
        assert c.read == c.ingested + c.rejected
        log.info("%s: read %d = ingested %d + rejected %d", source, c.read, c.ingested, c.rejected)
    too_many = {
        s: c for s, c in report.counts.items() if c.read and c.rejected / c.read > cfg.max_reject_fraction
    }
    if too_many:
        detail = "; ".join(f"{s}: {c.rejected}/{c.read} rejected" for s, c in too_many.items())
        raise IngestError(
            f"reject fraction above ingest.max_reject_fraction={cfg.max_reject_fraction}: {detail} "
            f"(see {report.rejects_path})"
        )
    return report
