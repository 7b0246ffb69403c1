"""The image tree of a data root: listed once, indexed for CBIS-DDSM path resolution, headers cached.

Layouts resolved (the same ``cases`` come out of each):

* the TCIA/NBIA download, descriptive names: ``[CBIS-DDSM/]<folder>/<date>-DDSM[-NA]-<study5>/
  <n>-<series description>-<series5>/1-N.dcm``, by ``(folder, study5, series5)``, the last five
  digits of the CSV path's UIDs;
* NBIA "classic" names, i.e. the CSV paths literally (``<folder>/<StudyUID>/<SeriesUID>/...``), and
  converted copies with ``.png`` images there: by the full series UID;
* NBIA's ``metadata.csv`` (``Series UID`` -> ``File Location``), which wins when present;
* the JPEG release (``csv/`` + ``dicom_info.csv``: ``SeriesInstanceUID`` -> ``image_path``);
* any other tree of DICOM files: by the Study / Series UIDs in the headers of the DICOM files no
  row has claimed (:meth:`TreeIndex.build_header_index`).

Nothing outside the root is read: every file comes from the listing, which marks links leaving the
root and non-regular files (their rows are rejected with that reason, the files are never opened);
CSV paths with ``..``, absolute paths and URIs are ``path_outside_root``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mammo.components import contracts, storage
from mammo.components.headers import DICOM_SUFFIXES, LJPEG_SUFFIXES, Header, HeaderError, read_header
from mammo.components.ingest.reasons import PATH_OUTSIDE_ROOT, RowRejected
from mammo.components.ingest.tables import CsvError, read_csv
from mammo.components.storage import Entry

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = DICOM_SUFFIXES + (".png", ".tif", ".tiff", ".jpg", ".jpeg") + LJPEG_SUFFIXES

#: a CBIS-DDSM folder name: ``Mass-Training_P_00001_LEFT_CC`` (+ ``_<abnormality id>`` for ROI series)
CBIS_FOLDER = re.compile(
    r"^(?P<kind>Mass|Calc)-(?P<split>Training|Test)_(?P<patient>P_\d+)_(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)"
    r"(?:_(?P<abn>\d+))?$"
)
_KEY5 = re.compile(r"(\d{5,})$")
_FULL_UID = re.compile(r"^\d+(?:\.\d+){3,}$")

# how a row's files were found (report["resolution"])
BY_METADATA = contracts.NBIA_METADATA
BY_DICOM_INFO = contracts.JPEG_DICOM_INFO
BY_UID_FOLDER = "uid_folder"
BY_NBIA_NAMES = "nbia_names"
BY_HEADER = "dicom_header"


# -- paths -----------------------------------------------------------------------------------------


def key5(name: str) -> str | None:
    """Last five digits of a study/series folder name (NBIA) or of a full UID (CSV layout)."""
    m = _KEY5.search(name)
    return m.group(1)[-5:] if m else None


def clean_rel(path: str) -> str | None:
    """A relative POSIX path without ``.``; None if it is absolute, a URI, or climbs with ``..``."""
    text = path.strip().replace("\\", "/")
    if not text or text.startswith("/") or "://" in text or re.match(r"^[A-Za-z]:", text):
        return None
    parts = [p for p in text.split("/") if p not in (".", "")]
    if ".." in parts or not parts:
        return None
    return "/".join(parts)


def check_inside_root(path: str) -> str:
    """The cleaned relative path; :class:`RowRejected` (``path_outside_root``) if it leaves the root."""
    clean = clean_rel(path)
    if clean is None:
        raise RowRejected(PATH_OUTSIDE_ROOT, f"path {path!r} is absolute, a URI, or leaves the data root")
    return clean


# -- headers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderFailure:
    """Why a header could not be read: a reason code and a message that quotes no file content."""

    reason: str
    message: str


def read_header_safe(entry: Entry) -> Header | HeaderFailure:
    """The header of a listed file, or why not (a refused file is never opened)."""
    if entry.problem:
        return HeaderFailure(entry.problem, f"{entry.rel}: {entry.detail or entry.problem}")
    try:
        return read_header(entry.uri, size=entry.size if storage.is_gcs(entry.uri) else None, name=entry.rel)
    except HeaderError as exc:
        return HeaderFailure(exc.reason, exc.message)
    except Exception as exc:  # noqa: BLE001 - storage / OS errors: the type only (text may quote content)
        return HeaderFailure("unreadable_dicom" if entry.rel.lower().endswith(DICOM_SUFFIXES) else "not_an_image",
                             f"{entry.rel}: not readable ({type(exc).__name__})")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _can_fork() -> bool:
    """Fork only where it exists and no other thread runs (forking a threaded process can deadlock)."""
    import multiprocessing
    import threading

    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


class HeaderCache:
    """Headers read at most once per file, many at a time.

    GCS reads are I/O-bound: ``workers`` threads. Local reads are CPU-bound (header parsing): large
    batches go to one process per CPU (fork), small ones stay in this process.
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
                results = list(pool.map(read_header_safe, todo))
        elif not remote and cpus > 1 and len(todo) >= self.PROCESS_BATCH and _can_fork():
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=cpus, mp_context=ctx) as pool:
                results = list(pool.map(read_header_safe, todo, chunksize=max(16, len(todo) // (cpus * 8))))
        else:
            results = [read_header_safe(e) for e in todo]
        for e, r in zip(todo, results):
            self._done[e.uri] = r

    def get(self, entry: Entry) -> Header | HeaderFailure:
        if entry.uri not in self._done:
            self.fetch([entry])
        return self._done[entry.uri]


# -- the index -------------------------------------------------------------------------------------


class TreeIndex:
    """Every image file under a data root, listed once and indexed for CSV path resolution.

    ``entries`` is :func:`mammo.components.storage.scan_files`' listing: refused files (links out
    of the root, FIFOs, devices) are indexed like the others so the rows naming them are rejected
    with the listing's reason.
    """

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
                s5, r5 = key5(parts[-3]), key5(parts[-2])
                if s5 and r5:
                    self.by_key5[(parts[-4], s5, r5)].append(e)
            if len(parts) >= 2 and _FULL_UID.match(parts[-2]):
                self.by_uid.setdefault(parts[-2], ([], BY_UID_FOLDER))[0].append(e)
        # the listings of metadata.csv / dicom_info.csv win over folder names: read them last
        for e in entries:
            if e.name.lower() == contracts.JPEG_DICOM_INFO and not e.problem:
                self._add_dicom_info(e)
        for e in entries:
            if e.name.lower() == contracts.NBIA_METADATA and not e.problem:
                self._add_nbia_metadata(e)
        log.info("indexed %d image files (%d series by name, %d by UID) under %s",
                 len(self.images), len(self.by_key5), len(self.by_uid), root)

    def _table(self, entry: Entry, required: list):
        try:
            return read_csv(entry, required)
        except CsvError as exc:
            self.notes.append(f"{exc.message}: not used")
            log.warning("%s: not used", exc.message)
            return None

    def _add_nbia_metadata(self, meta: Entry) -> None:
        table = self._table(meta, ["Series UID", "File Location"])
        if table is None:
            return
        base = meta.parent
        n = 0
        rows = [r for r in table.rows if isinstance(r, dict)]
        for r in rows:
            uid, loc = r["Series UID"], r["File Location"]
            rel = clean_rel(loc)
            if rel is None:
                self.skipped_locations += 1
                log.warning("%s: File Location %r leaves the data root: ignored", meta.rel, loc)
                continue
            rel = f"{base}/{rel}" if base else rel
            files = self.by_dir.get(rel)
            if uid and files:
                self.by_uid[uid] = (list(files), BY_METADATA)
                n += 1
        self.notes.append(f"NBIA {meta.rel}: {n} of {len(rows)} series found in the tree")

    def _add_dicom_info(self, info: Entry) -> None:
        table = self._table(info, ["SeriesInstanceUID", ("image_path", "file_path")])
        if table is None:
            return
        column = "image_path" if "image_path" in table.columns else "file_path"
        rows = [r for r in table.rows if isinstance(r, dict)]
        found: dict[str, list[Entry]] = defaultdict(list)
        for r in rows:
            rel = clean_rel(r[column])
            if rel is None:
                self.skipped_locations += 1
                continue
            parts = rel.split("/")
            # the release says CBIS-DDSM/jpeg/<uid>/1-1.jpg; the tree may start at any of those levels
            for k in range(len(parts) - 1):
                e = self.files.get("/".join(parts[k:]))
                if e is not None:
                    found[r["SeriesInstanceUID"]].append(e)
                    break
        for uid, files in found.items():
            self.by_uid[uid] = (sorted(files, key=lambda e: e.rel), BY_DICOM_INFO)
        self.notes.append(f"JPEG-release {info.rel}: {sum(map(len, found.values()))} of {len(rows)} images found")

    def lookup(self, csv_path: str) -> tuple[list[Entry], str] | None:
        """Files of the series a CSV path names (``folder/StudyUID/SeriesUID/file``), and how found."""
        folder, study, series, _ = csv_path.split("/")
        hit = self.by_uid.get(series)
        if hit is not None:
            return hit
        files = self.by_key5.get((folder, key5(study) or "", key5(series) or ""))
        if files:
            return files, BY_NBIA_NAMES
        if self.by_header is not None and self.by_header.get(series):
            return self.by_header[series], BY_HEADER
        return None

    def build_header_index(self) -> int:
        """Index the DICOM files no row has claimed by their SeriesInstanceUID (headers only)."""
        todo = [e for e in self.images
                if e.uri not in self.claimed and not e.problem and e.rel.lower().endswith(DICOM_SUFFIXES)]
        self.by_header = defaultdict(list)
        self.headers.fetch(todo)
        for e in todo:
            h = self.headers.get(e)
            if isinstance(h, Header) and h.series_uid:
                self.by_header[h.series_uid].append(e)
        log.info("read the headers of %d unclaimed DICOM files: %d series", len(todo), len(self.by_header))
        return len(todo)
