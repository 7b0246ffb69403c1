"""CBIS-DDSM row rules: one case-description CSV row -> a checked plan -> a ``cases`` row (or a reject).

Quirks handled: both density spellings; every cell stripped (the last path ends in an embedded
newline); crop and mask told apart by size (:func:`mammo.components.masks.choose_mask`: the mask
has the full image's size, or is within ``patches.mask_rescale_tolerance`` of it, whatever the CSV
column says); ``BENIGN_WITHOUT_CALLBACK`` -> benign; the folder names must repeat the row's type,
split, patient, side, view and abnormality id. Pixel spacing comes from the image header, else the
per-source default (``patches.default_pixel_spacing_mm``; CBIS-DDSM's DICOMs carry none), and
``pixel_spacing_source`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mammo.components.config import CLASS_NAMES
from mammo.components.headers import Header
from mammo.components.ingest.reasons import (
    BAD_VALUE,
    MASK_SIZE_MISMATCH,
    MISSING_FILE,
    UNKNOWN_LABEL,
    RowRejected,
    optional_int,
)
from mammo.components.ingest.tree import CBIS_FOLDER, HeaderCache, HeaderFailure, TreeIndex, check_inside_root
from mammo.components.masks import choose_mask
from mammo.components.storage import Entry

SOURCE = "cbis-ddsm"
PATHOLOGY = {"BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign", "MALIGNANT": "malignant"}
ABNORMALITY = {"mass": "mass", "calcification": "calcification"}
LABEL_PREFIX = {"mass": "mass", "calcification": "calc"}
PATH_COLUMNS = (("image", "image file path"), ("crop", "cropped image file path"), ("mask", "ROI mask file path"))
#: the columns a case-description CSV must have (a tuple lists accepted spellings)
REQUIRED_COLUMNS: list = ["patient_id", ("breast_density", "breast density"), "left or right breast", "image view",
                          "abnormality id", "abnormality type", "pathology", *(c for _, c in PATH_COLUMNS)]

# where a case's pixel spacing came from (cases.pixel_spacing_source)
SPACING_DEFAULT = "default"


@dataclass
class Plan:
    """A CSV row whose values passed the checks, waiting for its files and their headers."""

    source_file: str
    source_row: int
    fields: dict[str, Any]
    paths: dict[str, str]  # image / crop / mask -> cleaned CSV path
    found: dict[str, tuple[list[Entry], str] | None] = field(default_factory=dict)

    def missing(self) -> bool:
        return self.found.get("image") is None or (self.found.get("crop") is None and self.found.get("mask") is None)


def csv_split(name: str) -> str:
    return "test" if "_test_" in name else "train"


def plan_row(row: dict[str, str], source_file: str, source_row: int) -> Plan:
    """Check and normalise one CSV row's values (no file access); raises :class:`RowRejected`."""
    paths: dict[str, str] = {}
    for key, col in PATH_COLUMNS:
        value = row.get(col, "")
        if not value:
            raise RowRejected(BAD_VALUE, f"column {col!r} is empty")
        clean = check_inside_root(value)
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
    expected_type = "mass" if source_file.rpartition("/")[2].startswith("mass") else "calcification"
    if abn_type != expected_type:
        raise RowRejected(UNKNOWN_LABEL, f"abnormality type {row.get('abnormality type')!r} in a {expected_type} CSV")
    side, view = row.get("left or right breast", "").upper(), row.get("image view", "").upper()
    if side not in ("LEFT", "RIGHT") or view not in ("CC", "MLO"):
        raise RowRejected(BAD_VALUE, f"side/view {side!r}/{view!r} not in LEFT/RIGHT x CC/MLO")
    abn_id = optional_int(row.get("abnormality id", ""))
    if abn_id is None or abn_id < 1:
        raise RowRejected(BAD_VALUE, f"abnormality id {row.get('abnormality id')!r} is not a positive integer")
    patient = row.get("patient_id", "")
    if not patient:
        raise RowRejected(BAD_VALUE, "patient_id is empty")
    split = csv_split(source_file)
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
        "breast_density": optional_int(density),
        "assessment": optional_int(row.get("assessment", "")),
        "subtlety": optional_int(row.get("subtlety", "")),
        "mass_shape": row.get("mass shape") or None,
        "mass_margins": row.get("mass margins") or None,
        "calc_type": row.get("calc type") or None,
        "calc_distribution": row.get("calc distribution") or None,
        "source": SOURCE,
    }
    return Plan(source_file, source_row, fields, paths)


def resolve(plan: Plan, index: TreeIndex) -> None:
    """Look up the row's image and ROI series in the tree (those found are claimed)."""
    for key in ("image", "crop", "mask"):
        if plan.found.get(key) is None:
            plan.found[key] = index.lookup(plan.paths[key])
            if plan.found[key] is not None:
                index.claimed.update(e.uri for e in plan.found[key][0])


def header_entries(plan: Plan) -> list[Entry]:
    """The files whose headers the row needs (the first file of the image series, every ROI file)."""
    out: list[Entry] = []
    for key in ("image", "crop", "mask"):
        hit = plan.found.get(key)
        if hit:
            out.extend(hit[0][:1] if key == "image" else hit[0])
    return out


def header_of(cache: HeaderCache, entry: Entry, what: str) -> Header:
    """A file's header, or :class:`RowRejected` with the header reader's reason."""
    h = cache.get(entry)
    if isinstance(h, HeaderFailure):
        raise RowRejected(h.reason, f"{what} {h.message}")
    return h


def image_spacing(header: Header, source: str, defaults: dict[str, float]) -> tuple[float | None, str]:
    """(pixel spacing in mm, where it came from): the header's, else the source's documented default."""
    if header.pixel_spacing_mm:
        return header.pixel_spacing_mm, f"dicom:{header.spacing_source}"
    mm = defaults.get(source, defaults.get("all"))
    return (mm, f"{SPACING_DEFAULT}:{source}") if mm else (None, "")


def abnormal_case(plan: Plan, cache: HeaderCache, tolerance: float, spacing_defaults: dict[str, float]) -> dict:
    """The ``cases`` row of a resolved plan (raises :class:`RowRejected`)."""
    if plan.found["image"] is None:
        raise RowRejected(MISSING_FILE, f"no files for image file path {plan.paths['image']!r}")
    if plan.found["crop"] is None and plan.found["mask"] is None:
        raise RowRejected(MISSING_FILE, f"no files for ROI mask / cropped image path {plan.paths['mask']!r}")
    full_entry = plan.found["image"][0][0]
    full = header_of(cache, full_entry, "full image")
    # crop and mask share a series (or not); the CSV may swap them: the mask has the image's size
    candidates = sorted({e.uri: e for k in ("mask", "crop") if plan.found[k] for e in plan.found[k][0]}.values(),
                        key=lambda e: e.rel)
    infos = {e.uri: header_of(cache, e, "ROI/crop file") for e in candidates}
    choice = choose_mask([(e, (infos[e.uri].rows, infos[e.uri].cols)) for e in candidates],
                         (full.rows, full.cols), tolerance)
    if choice.mask is None:
        sizes = ", ".join(f"{e.name}={infos[e.uri].rows}x{infos[e.uri].cols}" for e in candidates)
        raise RowRejected(
            MASK_SIZE_MISMATCH,
            f"no ROI mask within {tolerance:.0%} of the full image's size {full.rows}x{full.cols} (found {sizes})",
        )
    mask = infos[choice.mask.uri]
    spacing, spacing_source = image_spacing(full, SOURCE, spacing_defaults)
    return {
        **plan.fields,
        "image_uri": full_entry.uri,
        "roi_mask_uri": choice.mask.uri,
        "cropped_uri": choice.crops[0].uri if choice.crops else "",
        "image_rows": full.rows,
        "image_cols": full.cols,
        "mask_rows": mask.rows,
        "mask_cols": mask.cols,
        "bits_stored": full.bits_stored,
        "photometric": full.photometric,
        "modality": full.modality,
        "image_format": full.image_format,
        "pixel_spacing_mm": spacing,
        "pixel_spacing_source": spacing_source,
        "source_file": plan.source_file,
        "source_row": plan.source_row,
        "scanner": full.manufacturer.upper(),
    }
