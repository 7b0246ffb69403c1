"""DDSM normals: every file of the normals folder becomes a case, a reject or a skipped file, with a reason.

Rows come from ``manifest.csv`` (columns ``patient_id, side, view, path`` and optionally
``scanner, bits_stored, pixel_spacing_mm``) when present, else from the file names: DDSM's own
``A_0018_1.LEFT_CC.LJPEG`` / ``.jpg`` / ``.png`` (the case ``A-0018-1.ics`` beside it gives digitizer,
bits and resolution per view) or ``N_00001_LEFT_CC.dcm``. Files that are not images (the ``.ics``
and the manifest themselves, unknown extensions such as ``.dcm.bak``, names with stray whitespace,
hidden files, an ``.LJPEG`` whose converted copy lies beside it) are listed in ``skipped`` with a
reason; image files that cannot be read
(0 bytes, text named ``.png``, a link leaving the folder, a FIFO) are rejects.

Bit depth: the metadata's (manifest / ``.ics``) unless the file holds fewer bits (an 8-bit JPEG of
a 12-bit scan is 8-bit). Pixel spacing, first found: the manifest's ``pixel_spacing_mm``; the
``.ics`` resolution (scaled when the file was downsampled from the size the ``.ics`` gives, both
axes alike); the image header; the per-source default (``patches.default_pixel_spacing_mm``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from mammo.components import contracts, storage
from mammo.components.config import CLASS_NAMES
from mammo.components.headers import LJPEG_SUFFIXES, Header
from mammo.components.ingest import reasons as R
from mammo.components.ingest.cbis import header_of, image_spacing
from mammo.components.ingest.reasons import RowRejected, optional_float, optional_int
from mammo.components.ingest.tables import BadRow, CsvError, read_csv
from mammo.components.ingest.tree import IMAGE_SUFFIXES, HeaderCache, clean_rel
from mammo.components.splits import stable_fraction
from mammo.components.storage import Entry

log = logging.getLogger(__name__)

SOURCE = "ddsm-normal"
MANIFEST_REQUIRED = ["patient_id", "side", "view", "path"]
MANIFEST_OPTIONAL = ["scanner", "bits_stored", "pixel_spacing_mm"]

#: ``N_00001_LEFT_CC.dcm`` (synthetic / converted) or DDSM's ``A_0200_1.LEFT_CC.png``
_NORMAL_NAME = re.compile(r"^(?P<patient>.+?)[._](?P<side>LEFT|RIGHT)[._](?P<view>CC|MLO)(?:\.[A-Za-z0-9]+)+$", re.I)
#: DDSM ``.ics`` view lines: ``LEFT_CC LINES 4696 PIXELS_PER_LINE 3024 BITS_PER_PIXEL 12 RESOLUTION 50 OVERLAY``
_ICS_VIEW = re.compile(r"^(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)\b(?P<rest>.*)$", re.I)
_ICS_FIELD = re.compile(r"\b(LINES|PIXELS_PER_LINE|BITS_PER_PIXEL|RESOLUTION)\s+(\d+(?:\.\d+)?)", re.I)
_SCANNERS = ("DBA", "HOWTEK", "LUMISYS")
#: the most bytes read of a .ics file (a real one is under 1 KB)
ICS_MAX_BYTES = 64 * 1024
#: the largest disagreement between the two axes' downsampling factors for the .ics spacing to be scaled
SCALE_TOLERANCE = 0.02

# cases.pixel_spacing_source values of the normals
SPACING_MANIFEST = "manifest"
SPACING_ICS = "ddsm_ics"
SPACING_ICS_SCALED = "ddsm_ics_scaled"


def scanner_name(text: str) -> str:
    text = (text or "").strip().upper()
    return next((s for s in _SCANNERS if text.startswith(s)), text)


@dataclass(frozen=True)
class IcsView:
    lines: int | None
    pixels_per_line: int | None
    bits: int | None
    #: microns in the file, mm here
    spacing_mm: float | None


def parse_ics(text: str) -> dict[str, Any]:
    """Digitizer and per-view size / bit depth / resolution from a DDSM ``.ics`` case file.

    Only these technical values are taken (the file also holds the patient's age and study date).
    Returns ``{"scanner": str, "views": {(side, view): IcsView}}``.
    """
    out: dict[str, Any] = {"scanner": "", "views": {}}
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("DIGITIZER"):
            out["scanner"] = scanner_name(line[len("DIGITIZER"):])
        m = _ICS_VIEW.match(line)
        if m:
            values = {k.upper(): v for k, v in _ICS_FIELD.findall(m["rest"])}
            res = optional_float(values.get("RESOLUTION"))
            out["views"][(m["side"].upper(), m["view"].upper())] = IcsView(
                optional_int(values.get("LINES")), optional_int(values.get("PIXELS_PER_LINE")),
                optional_int(values.get("BITS_PER_PIXEL")), res / 1000.0 if res else None)
    return out


def _case_key(stem: str) -> str:
    """``A-0018-1`` (the .ics name) and ``A_0018_1`` (the images' prefix) -> one key."""
    return stem.replace("-", "_").upper()


@dataclass
class NormalInputs:
    """What the normals folder holds: rows to become cases (or rejects) and skipped files."""

    source: str
    #: (row number, row values or the problem of that row)
    rows: list[tuple[int, dict | BadRow]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    files: dict[str, Entry] = field(default_factory=dict)
    #: a manifest that cannot be used (the whole input fails)
    error: CsvError | None = None

    def skip(self, entry: Entry, reason: str, message: str) -> None:
        self.skipped.append({"source": self.source, "path": entry.rel, "reason": reason, "message": message})


def _skip_reason(entry: Entry) -> tuple[str, str] | None:
    """Why a file is not a normal image candidate (None if it is one)."""
    name, lower = entry.name, entry.name.lower()
    if name != name.strip():
        return R.SKIP_ODD_NAME, f"{name!r}: leading or trailing whitespace in the file name; rename it"
    if name.startswith("."):
        return R.SKIP_HIDDEN, f"{name!r}: hidden file"
    if lower.endswith(".ics"):
        return R.SKIP_METADATA, "DDSM case file: digitizer, bits and resolution read from it"
    if not lower.endswith(IMAGE_SUFFIXES):
        return R.SKIP_UNKNOWN_EXTENSION, (f"{name!r}: not an image extension "
                                          f"({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)})")
    return None


def normal_inputs(root: str, entries: list[Entry]) -> NormalInputs:
    """Sort every listed file of the normals folder into rows and skipped files."""
    files = {e.rel: e for e in entries}
    manifest = files.get(contracts.NORMALS_MANIFEST)
    if manifest is not None:
        out = NormalInputs(contracts.NORMALS_MANIFEST, files=files)
        out.skip(manifest, R.SKIP_METADATA, "the normals manifest")
        try:
            table = read_csv(manifest, MANIFEST_REQUIRED)
        except CsvError as exc:
            exc.message = exc.message + f" (optional: {MANIFEST_OPTIONAL})" if exc.reason == R.SCHEMA_ERROR \
                else exc.message
            out.error = exc
            return out
        out.rows = list(enumerate(table.rows, start=1))
        named = {clean_rel(r["path"]) for r in table.rows if isinstance(r, dict)}
        for e in entries:
            if e is not manifest and e.rel not in named:
                why = _skip_reason(e)
                out.skip(e, why[0] if why else R.SKIP_NOT_IN_MANIFEST,
                         why[1] if why else f"{e.rel}: not named in {contracts.NORMALS_MANIFEST}")
        return out
    out = NormalInputs(root.rstrip("/").rpartition("/")[2] + "/", files=files)
    ics_by_key: dict[str, dict] = {}
    ics_by_dir: dict[str, list[dict]] = {}
    for e in entries:
        if e.name.lower().endswith(".ics") and not e.problem:
            try:
                ics = parse_ics(storage.read_bytes(e.uri, 0, ICS_MAX_BYTES).decode("latin-1"))
            except (storage.StorageError, OSError) as exc:
                log.warning("normals: cannot read %s: %s", e.rel, type(exc).__name__)
                continue
            ics_by_key[_case_key(e.name[:-4])] = ics
            ics_by_dir.setdefault(e.parent, []).append(ics)
    # a DDSM .LJPEG with a converted copy of the same view beside it: the copy is the case
    converted = {(e.parent, e.name.rpartition(".")[0].upper()) for e in entries
                 if not e.problem and _skip_reason(e) is None and not e.name.lower().endswith(LJPEG_SUFFIXES)}
    for e in entries:
        why = None if e.problem else _skip_reason(e)
        if why is None and e.name.lower().endswith(LJPEG_SUFFIXES) \
                and (e.parent, e.name.rpartition(".")[0].upper()) in converted:
            why = R.SKIP_CONVERTED, f"{e.name}: a converted copy of this view lies beside it and is used instead"
        if why is not None:
            out.skip(e, *why)
            continue
        m = _NORMAL_NAME.match(e.name)
        row = {"patient_id": m["patient"] if m else "", "side": m["side"].upper() if m else "",
               "view": m["view"].upper() if m else "", "path": e.rel, "scanner": "", "bits_stored": "",
               "pixel_spacing_mm": "", "_problem": e.problem, "_detail": e.detail}
        if m:
            same_dir = ics_by_dir.get(e.parent, [])
            ics = ics_by_key.get(_case_key(m["patient"])) or (same_dir[0] if len(same_dir) == 1 else None)
            if ics:
                row["scanner"] = ics["scanner"]
                row["_ics"] = ics["views"].get((row["side"], row["view"]))
        out.rows.append((len(out.rows) + 1, row))
    return out


def normal_split(patient_id: str, test_fraction: float) -> str:
    """Deterministic patient-level split of the normals (stable across runs and machines)."""
    return "test" if stable_fraction(patient_id) < test_fraction else "train"


def plan_normal(row: dict | BadRow, files: dict[str, Entry]) -> Entry:
    """The listed file a normals row names (raises :class:`RowRejected`)."""
    if isinstance(row, BadRow):
        raise RowRejected(R.MALFORMED_ROW, row.message)
    if row.get("_problem"):
        raise RowRejected(row["_problem"], f"{row['path']}: {row.get('_detail') or row['_problem']}")
    rel = str(row.get("path", "") or "")
    if not rel:
        raise RowRejected(R.BAD_VALUE, "column 'path' is empty")
    clean = clean_rel(rel)
    if clean is None:
        raise RowRejected(R.PATH_OUTSIDE_ROOT, f"path {rel!r} is absolute, a URI, or leaves the normals folder")
    patient, side, view = row.get("patient_id", ""), str(row.get("side", "")).upper(), str(row.get("view", "")).upper()
    if not patient or side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
        raise RowRejected(
            R.BAD_VALUE, f"cannot tell patient/side/view of {rel!r} (expected <patient>_<LEFT|RIGHT>_<CC|MLO>.<ext>)"
        )
    entry = files.get(clean)
    if entry is None:
        raise RowRejected(R.MISSING_FILE, f"normal image {rel!r} does not exist")
    if entry.problem:
        raise RowRejected(entry.problem, f"{entry.rel}: {entry.detail or entry.problem}")
    return entry


def _ics_spacing(view: IcsView | None, header: Header) -> tuple[float | None, str]:
    """The .ics resolution, scaled when the file was resampled from the scanned size (both axes alike)."""
    if view is None or not view.spacing_mm:
        return None, ""
    if not view.lines or not view.pixels_per_line:
        return view.spacing_mm, SPACING_ICS
    fr, fc = view.lines / header.rows, view.pixels_per_line / header.cols
    if abs(fr - 1) <= SCALE_TOLERANCE and abs(fc - 1) <= SCALE_TOLERANCE:
        return view.spacing_mm, SPACING_ICS
    if abs(fr - fc) <= SCALE_TOLERANCE * max(fr, fc):
        return round(view.spacing_mm * (fr + fc) / 2, 6), SPACING_ICS_SCALED
    return None, ""  # the file is not the scanned view the .ics describes (cropped?): its spacing is unknown


def normal_case(row: dict, entry: Entry, cache: HeaderCache, test_fraction: float, source: str, source_row: int,
                spacing_defaults: dict[str, float]) -> dict:
    """The ``cases`` row of a normal image (raises :class:`RowRejected`)."""
    info = header_of(cache, entry, "normal image")
    patient, side, view = row["patient_id"], str(row["side"]).upper(), str(row["view"]).upper()
    ics: IcsView | None = row.get("_ics")
    meta_bits = optional_int(row.get("bits_stored")) or (ics.bits if ics else None)
    # the file's own depth wins when it holds fewer bits than the metadata claims
    bits = min(meta_bits, info.bits_stored) if meta_bits else info.bits_stored
    spacing, spacing_source = optional_float(row.get("pixel_spacing_mm")), SPACING_MANIFEST
    if spacing is None:
        spacing, spacing_source = _ics_spacing(ics, info)
    if spacing is None:
        spacing, spacing_source = image_spacing(info, SOURCE, spacing_defaults)
    return {
        "case_id": f"Normal_{patient}_{side}_{view}",
        "patient_id": patient,
        "label": "normal",
        "label_index": CLASS_NAMES.index("normal"),
        "abnormality_type": "normal",
        "pathology": "normal",
        "split": normal_split(patient, test_fraction),
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
        "bits_stored": bits,
        "photometric": info.photometric,
        "modality": info.modality,
        "image_format": info.image_format,
        "pixel_spacing_mm": spacing,
        "pixel_spacing_source": spacing_source,
        "source": SOURCE,
        "scanner": scanner_name(str(row.get("scanner") or "")) or info.manufacturer.upper(),
        "source_file": source,
        "source_row": source_row,
    }
