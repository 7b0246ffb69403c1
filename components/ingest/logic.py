"""Ingest: CBIS-DDSM case-description CSVs + image tree + DDSM normals -> ``cases`` and ``rejects``.

Sources are a local folder or ``gs://bucket/prefix``; both go through :mod:`mammo.components.storage`
(one listing of the tree, ranged header reads, retries), so there is one code path.

**Layouts understood** (the same ``cases`` come out of each):

* the TCIA/NBIA download, descriptive names: ``[CBIS-DDSM/]<folder>/<date>-DDSM[-NA]-<study5>/
  <n>-<series description>-<series5>/1-N.dcm``, resolved by ``(folder, study5, series5)``, the last
  five digits of the CSV path's UIDs;
* the NBIA "classic" names, i.e. the CSV paths literally (``<folder>/<StudyUID>/<SeriesUID>/...``),
  and converted copies with ``.png`` (16- or 8-bit) images there: resolved by the full series UID;
* NBIA's ``metadata.csv`` (``Series UID`` -> ``File Location``), used first when present;
* the widely shared JPEG release (Kaggle "CBIS-DDSM: Breast Cancer Image Dataset"): ``csv/`` with the
  four CSVs and ``dicom_info.csv`` (``SeriesInstanceUID`` -> ``image_path``), ``jpeg/<SeriesUID>/*.jpg``;
* any other tree of DICOM files: rows still unresolved after the above are resolved by reading the
  ``StudyInstanceUID`` / ``SeriesInstanceUID`` of the DICOM files no row has claimed (headers only).

The tree is listed once and indexed; no per-row listing, and nothing outside the data root is ever
read (every file comes from that listing; CSV paths with ``..``, absolute paths and URIs are
rejected as ``path_outside_root``).

**Quirks handled** (ARCHITECTURE.md section 5): both density spellings; every cell stripped (the
last path ends in an embedded newline); crop and mask told apart by size (the mask has the full
image's size, whatever the CSV column says); ``BENIGN_WITHOUT_CALLBACK`` -> benign; a ROI mask whose
size differs from its image is rejected (``mask_size_mismatch``; not rescaled).

**Nothing lost**: every input row ends in ``cases`` or in ``rejects`` (reason code + message naming
the file and row); the report says, per input, ``read = ingested + rejected``; the step fails only
above ``ingest.max_reject_fraction`` (after writing both tables).

**PHI**: only technical header values leave the step (rows, columns, bits stored, photometric
interpretation, pixel spacing, modality, manufacturer); study / series UIDs are used for resolution
only; no other header value is stored, logged or reported.

**Split**: ``split`` is the official CBIS-DDSM split (a patient-hash split for the normals);
``subset`` further divides the official training rows into ``train`` / ``validation`` by patient,
stratified by class (``validation_fraction``), so validation can prove no patient is in both.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from mammo.components import storage
from mammo.components.splits import patient_split, stable_fraction
from mammo.components.config import CLASS_NAMES, IngestConfig
from mammo.components.storage import Entry

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
REASONS = (MISSING_FILE, UNREADABLE_DICOM, MASK_SIZE_MISMATCH, UNKNOWN_LABEL, DUPLICATE, PATH_OUTSIDE_ROOT, BAD_VALUE)

PATHOLOGY = {"BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign", "MALIGNANT": "malignant"}
ABNORMALITY = {"mass": "mass", "calcification": "calcification"}
LABEL_PREFIX = {"mass": "mass", "calcification": "calc"}
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = DICOM_SUFFIXES + (".png", ".tif", ".tiff", ".jpg", ".jpeg")

#: the columns of ``cases``, in order (the validation suite checks exactly this set)
CASE_COLUMNS = [
    "case_id", "patient_id", "label", "label_index", "abnormality_type", "pathology", "split", "subset",
    "side", "view", "abnormality_id", "breast_density", "assessment", "subtlety", "mass_shape",
    "mass_margins", "calc_type", "calc_distribution", "image_uri", "roi_mask_uri", "cropped_uri",
    "image_rows", "image_cols", "mask_rows", "mask_cols", "bits_stored", "photometric", "modality",
    "image_format", "pixel_spacing_mm", "source", "scanner", "source_file", "source_row",
]
REJECT_COLUMNS = ["source_file", "source_row", "case_id", "reason", "message"]
NULLABLE_INT = ["breast_density", "assessment", "subtlety", "mask_rows", "mask_cols"]

#: a CBIS-DDSM folder name: ``Mass-Training_P_00001_LEFT_CC`` (+ ``_<abnormality id>`` for ROI series)
CBIS_FOLDER = re.compile(
    r"^(?P<kind>Mass|Calc)-(?P<split>Training|Test)_(?P<patient>P_\d+)_(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)"
    r"(?:_(?P<abn>\d+))?$"
)
_KEY5 = re.compile(r"(\d{5,})$")
_FULL_UID = re.compile(r"^\d+(?:\.\d+){3,}$")

# how a row's files were found (report["resolution"])
BY_METADATA = "metadata.csv"
BY_DICOM_INFO = "dicom_info.csv"
BY_UID_FOLDER = "uid_folder"
BY_NBIA_NAMES = "nbia_names"
BY_HEADER = "dicom_header"


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


# -- image headers (technical values only) --------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The technical header values of one image. UIDs are for resolution only and never leave."""

    rows: int
    cols: int
    bits_stored: int
    photometric: str
    image_format: str  # dicom | png | jpeg | tiff
    modality: str = ""
    manufacturer: str = ""
    pixel_spacing_mm: float | None = None
    study_uid: str = ""
    series_uid: str = ""


#: first ranged read of an image on GCS: a CBIS-DDSM DICOM header is ~2 KB, a PNG/JPEG header less
HEADER_BLOCK = 16 * 1024

_DICOM_TAGS = [
    "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Manufacturer", "PixelSpacing", "ImagerPixelSpacing",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation",
]


def _spacing(value: Any) -> float | None:
    try:
        v = float(value[0]) if value is not None and len(value) else None
    except (TypeError, ValueError, IndexError):
        return None
    return v if v and v > 0 else None


def read_header(entry: Entry) -> Header:
    """Header of a DICOM (by its ``DICM`` preamble or suffix) or PNG / JPEG / TIFF, pixels not read.

    On GCS this fetches the first block of the object only (ranged read). Raises on anything that
    is not a readable single-image header.
    """
    with storage.open_read(entry.uri, size=entry.size or None, block=HEADER_BLOCK) as fh:
        is_dicom = entry.rel.lower().endswith(DICOM_SUFFIXES)
        if not is_dicom:
            is_dicom = fh.read(132)[128:132] == b"DICM"
            fh.seek(0)
        if is_dicom:
            import pydicom

            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
            if "Rows" not in ds or "Columns" not in ds:
                raise ValueError("no Rows/Columns")
            bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 0) or 16)
            return Header(
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                bits_stored=bits,
                photometric=str(getattr(ds, "PhotometricInterpretation", "") or "MONOCHROME2"),
                image_format="dicom",
                modality=str(getattr(ds, "Modality", "") or ""),
                manufacturer=str(getattr(ds, "Manufacturer", "") or "").strip(),
                pixel_spacing_mm=_spacing(getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)),
                study_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
                series_uid=str(getattr(ds, "SeriesInstanceUID", "") or ""),
            )
        from PIL import Image

        with Image.open(fh) as img:  # reads the header only
            cols, rows = img.size
            bits = 16 if img.mode.startswith("I") else 8
            fmt = (img.format or PurePosixPath(entry.rel).suffix.lstrip(".")).lower()
        return Header(rows=int(rows), cols=int(cols), bits_stored=bits, photometric="MONOCHROME2",
                      image_format={"jpg": "jpeg", "tif": "tiff"}.get(fmt, fmt))


@dataclass(frozen=True)
class HeaderFailure:
    """Why a header could not be read: the exception's type only (its text may quote file content)."""

    error: str


def _read_header_safe(entry: Entry) -> Header | HeaderFailure:
    try:
        return read_header(entry)
    except Exception as exc:  # noqa: BLE001 - pydicom / PIL / storage raise many types
        return HeaderFailure(type(exc).__name__)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class HeaderCache:
    """Headers read at most once per file, many at a time.

    GCS reads are I/O-bound: ``workers`` threads. Local reads are CPU-bound (pydicom parsing):
    large batches go to one process per CPU (fork), small ones stay in this process.
    """

    #: local batches at least this large are parsed in worker processes
    PROCESS_BATCH = 512

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._done: dict[str, Header | HeaderFailure] = {}

    @property
    def reads(self) -> int:
        return len(self._done)

    def fetch(self, entries: Iterable[Entry]) -> None:
        todo = list({e.uri: e for e in entries if e.uri not in self._done}.values())
        if not todo:
            return
        remote = any(storage.is_gcs(e.uri) for e in todo)
        cpus = _cpus()
        if remote and self.workers > 1 and len(todo) > 1:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                results = list(pool.map(_read_header_safe, todo))
        elif not remote and cpus > 1 and len(todo) >= self.PROCESS_BATCH and _can_fork():
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=cpus, mp_context=ctx) as pool:
                results = list(pool.map(_read_header_safe, todo, chunksize=max(16, len(todo) // (cpus * 8))))
        else:
            results = [_read_header_safe(e) for e in todo]
        for e, r in zip(todo, results):
            self._done[e.uri] = r

    def get(self, entry: Entry) -> Header | HeaderFailure:
        if entry.uri not in self._done:
            self.fetch([entry])
        return self._done[entry.uri]


def _can_fork() -> bool:
    """Fork only where it exists and no other thread runs (forking a threaded process can deadlock)."""
    import multiprocessing
    import threading

    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


# -- the tree index --------------------------------------------------------------------------------


def _key5(name: str) -> str | None:
    """Last five digits of a study/series folder name (NBIA) or of a full UID (CSV layout)."""
    m = _KEY5.search(name)
    return m.group(1)[-5:] if m else None


def _clean_rel(path: str) -> str | None:
    """A relative POSIX path without ``.``; None if it is absolute or climbs with ``..``."""
    text = path.strip().replace("\\", "/")
    if not text or text.startswith("/") or "://" in text or re.match(r"^[A-Za-z]:", text):
        return None
    parts = [p for p in text.split("/") if p not in (".", "")]
    if ".." in parts or not parts:
        return None
    return "/".join(parts)


def check_inside_root(csv_path: str) -> None:
    """A CSV path must be relative and must not climb out of the data root (nor name a URI)."""
    if _clean_rel(csv_path) is None:
        raise RowRejected(PATH_OUTSIDE_ROOT, f"path {csv_path!r} is absolute, a URI, or leaves the data root")


def _read_table(entry: Entry) -> pd.DataFrame:
    """A CSV with every header and cell stripped, all values as strings."""
    df = pd.read_csv(io.BytesIO(storage.read_bytes(entry.uri)), dtype=str, keep_default_na=False)
    df.columns = [str(c).strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip())


def read_case_csv(path: str | Any) -> pd.DataFrame:
    """A case-description CSV (local path or gs:// URI) with every header and cell stripped."""
    return _read_table(Entry(str(path), PurePosixPath(str(path)).name, 0))


class TreeIndex:
    """Every image file under a data root, listed once and indexed for CSV path resolution."""

    def __init__(self, root: str, entries: list[Entry], header_cache: HeaderCache):
        self.root = root
        self.headers = header_cache
        self.files = {e.rel: e for e in entries}
        self.images = [e for e in entries if e.rel.lower().endswith(IMAGE_SUFFIXES)]
        self.by_dir: dict[str, list[Entry]] = defaultdict(list)
        for e in self.images:
            self.by_dir[e.parent].append(e)
        self.by_key5: dict[tuple[str, str, str], list[Entry]] = defaultdict(list)
        #: full series UID -> (files, method)
        self.by_uid: dict[str, tuple[list[Entry], str]] = {}
        self.by_header: dict[str, list[Entry]] | None = None
        self.claimed: set[str] = set()
        self.notes: list[str] = []
        self.skipped_locations = 0
        for e in self.images:
            parts = e.rel.split("/")
            if len(parts) >= 4 and CBIS_FOLDER.match(parts[-4]):
                s5, r5 = _key5(parts[-3]), _key5(parts[-2])
                if s5 and r5:
                    self.by_key5[(parts[-4], s5, r5)].append(e)
            if len(parts) >= 2 and _FULL_UID.match(parts[-2]):
                self.by_uid.setdefault(parts[-2], ([], BY_UID_FOLDER))[0].append(e)
        # the listings of metadata.csv / dicom_info.csv win over folder names: read them last
        for e in entries:
            name = e.name.lower()
            if name == "dicom_info.csv":
                self._add_dicom_info(e)
        for e in entries:
            if e.name.lower() == "metadata.csv":
                self._add_nbia_metadata(e)
        log.info("indexed %d image files (%d series by name, %d by UID) under %s",
                 len(self.images), len(self.by_key5), len(self.by_uid), root)

    def _add_nbia_metadata(self, meta: Entry) -> None:
        df = _read_table(meta)
        if not {"Series UID", "File Location"} <= set(df.columns):
            return
        base = meta.parent
        n = 0
        for uid, loc in zip(df["Series UID"], df["File Location"]):
            rel = _clean_rel(loc)
            if rel is None:
                self.skipped_locations += 1
                log.warning("%s: File Location %r leaves the data root: ignored", meta.rel, loc)
                continue
            rel = f"{base}/{rel}" if base else rel
            files = self.by_dir.get(rel)
            if uid and files:
                self.by_uid[uid] = (list(files), BY_METADATA)
                n += 1
        self.notes.append(f"NBIA {meta.rel}: {n} of {len(df)} series found in the tree")

    def _add_dicom_info(self, info: Entry) -> None:
        df = _read_table(info)
        column = "image_path" if "image_path" in df.columns else "file_path" if "file_path" in df.columns else None
        if column is None or "SeriesInstanceUID" not in df.columns:
            return
        found: dict[str, list[Entry]] = defaultdict(list)
        for uid, path in zip(df["SeriesInstanceUID"], df[column]):
            rel = _clean_rel(path)
            if rel is None:
                self.skipped_locations += 1
                continue
            parts = rel.split("/")
            # the release says CBIS-DDSM/jpeg/<uid>/1-1.jpg; the tree may start at any of those levels
            for k in range(len(parts) - 1):
                e = self.files.get("/".join(parts[k:]))
                if e is not None:
                    found[uid].append(e)
                    break
        for uid, files in found.items():
            self.by_uid[uid] = (sorted(files, key=lambda e: e.rel), BY_DICOM_INFO)
        self.notes.append(f"JPEG-release {info.rel}: {sum(map(len, found.values()))} of {len(df)} images found")

    def lookup(self, csv_path: str) -> tuple[list[Entry], str] | None:
        """Files of the series a CSV path names (``folder/StudyUID/SeriesUID/file``), and how found."""
        folder, study, series, _ = csv_path.split("/")
        hit = self.by_uid.get(series)
        if hit is not None:
            return hit
        files = self.by_key5.get((folder, _key5(study) or "", _key5(series) or ""))
        if files:
            return files, BY_NBIA_NAMES
        if self.by_header is not None and self.by_header.get(series):
            return self.by_header[series], BY_HEADER
        return None

    def build_header_index(self) -> int:
        """Index the DICOM files no row has claimed by their SeriesInstanceUID (headers only)."""
        todo = [e for e in self.images if e.uri not in self.claimed and e.rel.lower().endswith(DICOM_SUFFIXES)]
        self.by_header = defaultdict(list)
        self.headers.fetch(todo)
        for e in todo:
            h = self.headers.get(e)
            if isinstance(h, Header) and h.series_uid:
                self.by_header[h.series_uid].append(e)
        log.info("read the headers of %d unclaimed DICOM files: %d series", len(todo), len(self.by_header))
        return len(todo)


# -- CBIS-DDSM rows ------------------------------------------------------------------------------


def _optional_int(value: Any) -> int | None:
    try:
        return int(float(value)) if value not in ("", None) else None
    except (TypeError, ValueError):
        return None


def _optional_float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v and v > 0 else None


@dataclass
class _Plan:
    """A CSV row whose values passed the checks, waiting for its files and their headers."""

    source_file: str
    source_row: int
    fields: dict[str, Any]
    paths: dict[str, str]  # image / crop / mask -> cleaned CSV path
    found: dict[str, tuple[list[Entry], str] | None] = field(default_factory=dict)

    def missing(self) -> bool:
        return self.found.get("image") is None or (self.found.get("crop") is None and self.found.get("mask") is None)


def _csv_split(name: str) -> str:
    return "test" if "_test_" in name else "train"


def _plan_row(row: dict[str, str], source_file: str, source_row: int) -> _Plan:
    """Check and normalise one CSV row's values (no file access)."""
    paths: dict[str, str] = {}
    for key, col in (("image", "image file path"), ("crop", "cropped image file path"), ("mask", "ROI mask file path")):
        value = row.get(col, "")
        if not value:
            raise RowRejected(BAD_VALUE, f"column {col!r} is empty")
        check_inside_root(value)
        clean = _clean_rel(value) or ""
        if clean.count("/") != 3:
            raise RowRejected(BAD_VALUE, f"{col} {value!r} is not of the form folder/StudyUID/SeriesUID/file")
        paths[key] = clean
    abn_type = ABNORMALITY.get(row.get("abnormality type", "").lower())
    pathology = PATHOLOGY.get(row.get("pathology", "").upper())
    if abn_type is None or pathology is None:
        raise RowRejected(
            UNKNOWN_LABEL,
            f"unknown label values abnormality type={row.get('abnormality type')!r} pathology={row.get('pathology')!r}",
        )
    expected_type = "mass" if source_file.startswith("mass") else "calcification"
    if abn_type != expected_type:
        raise RowRejected(UNKNOWN_LABEL, f"abnormality type {row.get('abnormality type')!r} in a {expected_type} CSV")
    side, view = row.get("left or right breast", "").upper(), row.get("image view", "").upper()
    if side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
        raise RowRejected(BAD_VALUE, f"side/view {side!r}/{view!r} not in LEFT/RIGHT x CC/MLO")
    abn_id = _optional_int(row.get("abnormality id", ""))
    if abn_id is None or abn_id < 1:
        raise RowRejected(BAD_VALUE, f"abnormality id {row.get('abnormality id')!r} is not a positive integer")
    patient = row.get("patient_id", "")
    if not patient:
        raise RowRejected(BAD_VALUE, "patient_id is empty")
    split = _csv_split(source_file)
    # the folder names repeat type, split, patient, side, view (and the abnormality id for ROIs)
    folder = paths["image"].split("/", 1)[0]
    m = CBIS_FOLDER.match(folder)
    expected = (LABEL_PREFIX[abn_type].capitalize(), "Test" if split == "test" else "Training", patient, side, view)
    if not m or (m["kind"], m["split"], m["patient"], m["side"], m["view"]) != expected or m["abn"]:
        raise RowRejected(BAD_VALUE, f"image folder {folder!r} disagrees with the row "
                                     f"({'-'.join(expected[:2])}_{patient}_{side}_{view})")
    for key in ("crop", "mask"):
        roi_folder = paths[key].split("/", 1)[0]
        if roi_folder != f"{folder}_{abn_id}":
            raise RowRejected(BAD_VALUE, f"{key} folder {roi_folder!r} is not {folder}_{abn_id}")
    label = f"{LABEL_PREFIX[abn_type]}_{pathology}"
    density = row.get("breast_density", row.get("breast density", ""))
    fields = {
        "case_id": f"{folder}_{abn_id}",
        "patient_id": patient,
        "label": label,
        "label_index": CLASS_NAMES.index(label),
        "abnormality_type": abn_type,
        "pathology": pathology,
        "split": split,
        "side": side,
        "view": view,
        "abnormality_id": abn_id,
        "breast_density": _optional_int(density),
        "assessment": _optional_int(row.get("assessment", "")),
        "subtlety": _optional_int(row.get("subtlety", "")),
        "mass_shape": row.get("mass shape") or None,
        "mass_margins": row.get("mass margins") or None,
        "calc_type": row.get("calc type") or None,
        "calc_distribution": row.get("calc distribution") or None,
        "source": "cbis-ddsm",
    }
    return _Plan(source_file, source_row, fields, paths)


def _resolve(plan: _Plan, index: TreeIndex) -> None:
    for key in ("image", "crop", "mask"):
        if plan.found.get(key) is None:
            plan.found[key] = index.lookup(plan.paths[key])
            if plan.found[key] is not None:
                index.claimed.update(e.uri for e in plan.found[key][0])


def _header(cache: HeaderCache, entry: Entry, what: str) -> Header:
    h = cache.get(entry)
    if isinstance(h, HeaderFailure):
        raise RowRejected(UNREADABLE_DICOM, f"{what} {entry.rel} is not a readable image: {h.error}")
    return h


def _abnormal_case(plan: _Plan, cache: HeaderCache) -> dict:
    if plan.found["image"] is None:
        raise RowRejected(MISSING_FILE, f"no files for image file path {plan.paths['image']!r}")
    if plan.found["crop"] is None and plan.found["mask"] is None:
        raise RowRejected(MISSING_FILE, f"no files for ROI mask / cropped image path {plan.paths['mask']!r}")
    full_entry = plan.found["image"][0][0]
    full = _header(cache, full_entry, "full image")
    # crop and mask share a series (or not); the CSV may swap them: the mask has the image's size
    candidates = sorted({e.uri: e for k in ("mask", "crop") if plan.found[k] for e in plan.found[k][0]}.values(),
                        key=lambda e: e.rel)
    infos = [(e, _header(cache, e, "ROI/crop file")) for e in candidates]
    masks = [(e, h) for e, h in infos if (h.rows, h.cols) == (full.rows, full.cols)]
    if not masks:
        sizes = ", ".join(f"{e.name}={h.rows}x{h.cols}" for e, h in infos)
        raise RowRejected(
            MASK_SIZE_MISMATCH,
            f"no ROI mask with the full image's size {full.rows}x{full.cols} (found {sizes}); rejected, not rescaled",
        )
    mask_entry, mask = masks[0]
    crops = [e for e, _ in infos if e.uri != mask_entry.uri]
    return {
        **plan.fields,
        "image_uri": full_entry.uri,
        "roi_mask_uri": mask_entry.uri,
        "cropped_uri": crops[0].uri if crops else "",
        "image_rows": full.rows,
        "image_cols": full.cols,
        "mask_rows": mask.rows,
        "mask_cols": mask.cols,
        "bits_stored": full.bits_stored,
        "photometric": full.photometric,
        "modality": full.modality,
        "image_format": full.image_format,
        "pixel_spacing_mm": full.pixel_spacing_mm,
        "scanner": full.manufacturer.upper(),
        "source_file": plan.source_file,
        "source_row": plan.source_row,
    }


# -- DDSM normals ----------------------------------------------------------------------------------

#: ``N_00001_LEFT_CC.dcm`` (synthetic / converted) or DDSM's ``A_0200_1.LEFT_CC.png``
_NORMAL_NAME = re.compile(r"^(?P<patient>.+?)[._](?P<side>LEFT|RIGHT)[._](?P<view>CC|MLO)(?:\.[A-Za-z0-9]+)+$", re.I)
#: DDSM ``.ics`` lines: ``LEFT_CC LINES 4696 PIXELS_PER_LINE 3024 BITS_PER_PIXEL 12 RESOLUTION 50 OVERLAY``
_ICS_VIEW = re.compile(r"^(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)\b.*?\bBITS_PER_PIXEL\s+(?P<bits>\d+)"
                       r"(?:.*?\bRESOLUTION\s+(?P<res>\d+(?:\.\d+)?))?", re.I)
_SCANNERS = ("DBA", "HOWTEK", "LUMISYS")


def _scanner_name(text: str) -> str:
    text = (text or "").strip().upper()
    return next((s for s in _SCANNERS if text.startswith(s)), text)


def parse_ics(text: str) -> dict[str, Any]:
    """Digitizer and per-view bit depth / resolution from a DDSM ``.ics`` case file.

    Only these technical values are taken (the file also holds the patient's age and study date).
    """
    out: dict[str, Any] = {"scanner": "", "views": {}}
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("DIGITIZER"):
            out["scanner"] = _scanner_name(line[len("DIGITIZER"):])
        m = _ICS_VIEW.match(line)
        if m:
            spacing = float(m["res"]) / 1000.0 if m["res"] else None  # microns -> mm
            out["views"][(m["side"].upper(), m["view"].upper())] = (int(m["bits"]), spacing)
    return out


def _normal_rows(root: str, entries: list[Entry], files: dict[str, Entry]) -> tuple[str, list[dict]]:
    """(source name, rows) of the normals: from ``manifest.csv`` if present, else by scanning names."""
    manifest = files.get("manifest.csv")
    if manifest is not None:
        df = _read_table(manifest)
        return "manifest.csv", df.to_dict("records")
    ics_by_dir: dict[str, dict] = {}
    for e in entries:
        if e.rel.lower().endswith(".ics"):
            try:
                ics_by_dir[e.parent] = parse_ics(storage.read_text(e.uri, encoding="latin-1"))
            except (storage.StorageError, OSError) as exc:
                log.warning("normals: cannot read %s: %s", e.rel, type(exc).__name__)
    ljpeg = sum(1 for e in entries if e.rel.lower().endswith(".ljpeg"))
    if ljpeg:
        log.warning("normals: %d .LJPEG files skipped (convert DDSM LJPEG to 16-bit PNG or DICOM first)", ljpeg)
    rows = []
    for e in entries:
        if not e.rel.lower().endswith(IMAGE_SUFFIXES):
            continue
        m = _NORMAL_NAME.match(e.name)
        row = {"patient_id": m["patient"] if m else "", "side": m["side"].upper() if m else "",
               "view": m["view"].upper() if m else "", "path": e.rel, "scanner": "", "bits_stored": "",
               "pixel_spacing_mm": ""}
        ics = ics_by_dir.get(e.parent)
        if ics and m:
            row["scanner"] = ics["scanner"]
            bits, spacing = ics["views"].get((row["side"], row["view"]), (None, None))
            row["bits_stored"] = str(bits or "")
            row["pixel_spacing_mm"] = str(spacing or "")
        rows.append(row)
    return PurePosixPath(root).name + "/", rows


def _normal_split(patient_id: str, test_fraction: float) -> str:
    """Deterministic patient-level split of the normals (stable across runs and machines)."""
    return "test" if stable_fraction(patient_id) < test_fraction else "train"


def _plan_normal(row: dict, files: dict[str, Entry]) -> Entry:
    rel = str(row.get("path", "") or "")
    if not rel:
        raise RowRejected(BAD_VALUE, "empty path")
    check_inside_root(rel)
    patient, side, view = row.get("patient_id", ""), str(row.get("side", "")).upper(), str(row.get("view", "")).upper()
    if not patient or side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
        raise RowRejected(
            BAD_VALUE, f"cannot tell patient/side/view of {rel!r} (expected <patient>_<LEFT|RIGHT>_<CC|MLO>.<ext>)"
        )
    entry = files.get(_clean_rel(rel) or "")
    if entry is None:
        raise RowRejected(MISSING_FILE, f"normal image {rel!r} does not exist")
    return entry


def _normal_case(row: dict, entry: Entry, cache: HeaderCache, cfg: IngestConfig, source: str, source_row: int) -> dict:
    info = _header(cache, entry, "normal image")
    patient, side, view = row["patient_id"], str(row["side"]).upper(), str(row["view"]).upper()
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
        "image_uri": entry.uri,
        "roi_mask_uri": "",
        "cropped_uri": "",
        "image_rows": info.rows,
        "image_cols": info.cols,
        "mask_rows": None,
        "mask_cols": None,
        # the manifest (or .ics) knows a 12-bit scan stored in a 16-bit PNG; the header does not
        "bits_stored": _optional_int(row.get("bits_stored")) or info.bits_stored,
        "photometric": info.photometric,
        "modality": info.modality,
        "image_format": info.image_format,
        "pixel_spacing_mm": _optional_float(row.get("pixel_spacing_mm")) or info.pixel_spacing_mm,
        "source": "ddsm-normal",
        "scanner": _scanner_name(str(row.get("scanner") or "")) or info.manufacturer.upper(),
        "source_file": source,
        "source_row": source_row,
    }


# -- train / validation subsets ----------------------------------------------------------------------


def assign_subsets(cases: pd.DataFrame, validation_fraction: float, seed: int) -> pd.Series:
    """The ``subset`` column: see :func:`mammo.components.splits.patient_split`."""
    return patient_split(cases, validation_fraction, seed)


# -- the step ------------------------------------------------------------------------------------


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


_LOGGED_PER_REASON = 20


def ingest(
    data_root: str | Any,
    normals_root: str | Any,
    out_dir: str | Any,
    cfg: IngestConfig,
    *,
    seed: int = 1234,
    validation_fraction: float = 0.2,
) -> IngestReport:
    """Read the CBIS-DDSM CSVs and images (under ``data_root``) and the normals; write the tables.

    ``data_root`` / ``normals_root`` are local folders or ``gs://bucket/prefix``. Writes
    ``cases.parquet``, ``rejects.parquet`` and ``report.json`` into ``out_dir`` (local or gs://).
    ``seed`` and ``validation_fraction`` decide the patient-grouped ``subset`` column. Raises
    :class:`IngestError` when an input is missing, or more than ``cfg.max_reject_fraction`` of any
    input's rows are rejected (after writing the tables, so the rejects can be inspected).
    """
    started = time.perf_counter()
    data_root, normals_root = storage.normalize_root(data_root), storage.normalize_root(normals_root)
    out_dir = storage.normalize_root(out_dir)
    cache = HeaderCache(cfg.io_workers)
    report = IngestReport()

    data_entries = storage.list_files(data_root)
    data_files = {e.rel: e for e in data_entries}
    csvs = _find_csvs(data_files, data_root)
    normal_entries = storage.list_files(normals_root)
    if not normal_entries:
        raise IngestError(f"normals folder {normals_root} does not exist or is empty")
    index = TreeIndex(data_root, data_entries, cache)
    report.notes.extend(index.notes)
    if index.skipped_locations:
        report.notes.append(f"{index.skipped_locations} metadata.csv / dicom_info.csv locations outside the root ignored")

    # outcome per input row, in input order: a case dict, a RowRejected, or a pending plan
    outcomes: list[tuple[str, int, Any]] = []
    plans: list[_Plan] = []
    for name in CSV_FILES:
        df = _read_table(csvs[name])
        log.info("reading %s: %d rows", csvs[name].rel, len(df))
        for i, row in enumerate(df.to_dict("records"), start=1):  # source_row: 1-based data row
            try:
                plan = _plan_row(row, name, i)
                _resolve(plan, index)
                plans.append(plan)
                outcomes.append((name, i, plan))
            except RowRejected as rej:
                outcomes.append((name, i, rej))

    # rows whose files no name or listing gave: read the headers of the DICOM files nobody claimed
    pending = [p for p in plans if p.missing()]
    if pending and cfg.resolve_by_header:
        if index.build_header_index():
            for p in pending:
                _resolve(p, index)
            report.notes.append(f"{sum(not p.missing() for p in pending)} rows resolved by DICOM headers")

    # every header needed, fetched once and concurrently
    cache.fetch(e for p in plans if not p.missing() for k in ("image", "crop", "mask") if p.found[k]
                for e in (p.found[k][0][:1] if k == "image" else p.found[k][0]))

    normal_files = {e.rel: e for e in normal_entries}
    normal_source, normal_rows = _normal_rows(normals_root, normal_entries, normal_files)
    log.info("reading normals from %s: %d images", normal_source, len(normal_rows))
    normal_plans: list[tuple[int, dict, Entry | RowRejected]] = []
    for i, row in enumerate(normal_rows, start=1):
        try:
            normal_plans.append((i, row, _plan_normal(row, normal_files)))
        except RowRejected as rej:
            normal_plans.append((i, row, rej))
    cache.fetch(e for _, _, e in normal_plans if isinstance(e, Entry))

    cases: list[dict] = []
    rejects: list[dict] = []
    seen_ids: dict[str, str] = {}
    seen_keys: dict[tuple, str] = {}
    logged: Counter = Counter()
    resolution: Counter = Counter()

    def record(source: str, row_no: int, make: Callable[[], dict], case_id: str = "") -> bool:
        """Count one input row; it becomes a case or a reject. True if ingested."""
        counts = report.counts.setdefault(source, SourceCounts())
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
            rejects.append({"source_file": source, "source_row": row_no, "case_id": case_id,
                            "reason": rej.reason, "message": rej.message})
            logged[rej.reason] += 1
            level = logging.WARNING if logged[rej.reason] <= _LOGGED_PER_REASON else logging.DEBUG
            log.log(level, "reject %s row %d: %s: %s", source, row_no, rej.reason, rej.message)
            return False

    def _raise(rej: RowRejected) -> dict:
        raise rej

    for source, row_no, outcome in outcomes:
        if isinstance(outcome, RowRejected):
            record(source, row_no, lambda rej=outcome: _raise(rej))
            continue
        plan: _Plan = outcome
        if record(source, row_no, lambda plan=plan: _abnormal_case(plan, cache), plan.fields["case_id"]):
            resolution[plan.found["image"][1]] += 1

    for i, row, outcome in normal_plans:
        if isinstance(outcome, RowRejected):
            record(normal_source, i, lambda rej=outcome: _raise(rej))
        else:
            record(normal_source, i,
                   lambda row=row, e=outcome, i=i: _normal_case(row, e, cache, cfg, normal_source, i))

    cases_df = pd.DataFrame(cases, columns=CASE_COLUMNS)
    for col in NULLABLE_INT:
        cases_df[col] = cases_df[col].astype("Int64")
    cases_df["pixel_spacing_mm"] = cases_df["pixel_spacing_mm"].astype("float64")
    if len(cases_df):
        cases_df["subset"] = assign_subsets(cases_df, validation_fraction, seed)
    rejects_df = pd.DataFrame(rejects, columns=REJECT_COLUMNS)

    report.cases_path = storage.join(out_dir, "cases.parquet")
    report.rejects_path = storage.join(out_dir, "rejects.parquet")
    for df, uri in ((cases_df, report.cases_path), (rejects_df, report.rejects_path)):
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        storage.write_bytes(uri, buf.getvalue())
    report.reject_reasons = dict(Counter(r["reason"] for r in rejects))
    report.per_class = {c: int((cases_df["label"] == c).sum()) for c in CLASS_NAMES}
    report.resolution = dict(resolution)
    report.header_reads = cache.reads
    report.seconds = round(time.perf_counter() - started, 3)
    report.rows_per_s = round(report.totals.read / report.seconds, 1) if report.seconds else 0.0
    storage.write_text(storage.join(out_dir, "report.json"), json.dumps({"step": "ingest", **report.to_dict()}, indent=2))

    for source, c in report.counts.items():
        if c.read != c.ingested + c.rejected:  # cannot happen: record() counts every row once
            raise IngestError(f"{source}: read {c.read} != ingested {c.ingested} + rejected {c.rejected}")
        log.info("%s: read %d = ingested %d + rejected %d", source, c.read, c.ingested, c.rejected)
    log.info("ingest: %d cases, %d rejects %s, resolved by %s, %d headers read, %.1f s (%.0f rows/s)",
             len(cases_df), len(rejects_df), report.reject_reasons, report.resolution, report.header_reads,
             report.seconds, report.rows_per_s)
    too_many = {s: c for s, c in report.counts.items() if c.read and c.rejected / c.read > cfg.max_reject_fraction}
    if too_many:
        detail = "; ".join(
            f"{s}: {c.rejected}/{c.read} rejected ("
            + ", ".join(f"{r} {n}" for r, n in Counter(x["reason"] for x in rejects if x["source_file"] == s).most_common(3))
            + ")"
            for s, c in too_many.items()
        )
        raise IngestError(
            f"reject fraction above ingest.max_reject_fraction={cfg.max_reject_fraction}: {detail} "
            f"(see {report.rejects_path})"
        )
    return report
