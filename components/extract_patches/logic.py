"""Patch extraction: ROI-centred crops of abnormalities, tissue crops of normal CC views.

Sizes are physical: the minimum crop and the normal crop side are millimetres, turned into pixels per
image from its pixel spacing (the ``cases`` row's ``pixel_spacing_mm``, else the file header's, else the
per-source default ``patches.default_pixel_spacing_mm``; which one is recorded as ``spacing_source``,
ingest's ``pixel_spacing_source`` where the row has one).

Abnormal patch (one per abnormality, also when an image carries several): the bounding box of the ROI
mask (its pixels above half the mask's maximum: 0/1, 0/255 and JPEG masks alike), a square window of
side ``max(box h, box w) * (1 + context_margin)`` (at least ``min_crop_mm``), placed by the protocol
(:mod:`.geometry`: ``unbiased`` shifts it inside the image, ``paper`` centres it and zero-pads), mapped
to 8 bits (:func:`mammo.components.imaging.to_uint8`) and resampled to ``image_size`` (Lanczos). A
mask whose box holds several separate regions is used as one box, with a warning and ``mask_blobs``
recorded, so such rows can be found and reviewed.

ROI mask status (``mask_status``): ``ok``; ``swapped`` (the row's cropped-image file has the image's
size and its "mask" does not: the CSV swapped the columns); ``rescaled`` (rows and columns within
``mask_rescale_tolerance`` of the image's: the box is stretched by the size ratios; the rule is
:mod:`mammo.components.masks`, shared with ingest); ``empty`` /
``size_mismatch`` / ``unreadable``: the cropped-image DICOM is the fallback (``patch_source =
"cropped"``, padded to a square around its own centre, padding recorded), else the case is rejected.

Normal patch: only CC views (as in the paper). The breast mask is Otsu's threshold of the 8-bit image,
its largest connected component with holes filled. Each crop is kept only if at least
``min_tissue_fraction`` of it is breast. Its side: ``normal_crop_mm`` under ``paper``; under
``unbiased`` a seeded draw from the sides (mm) of this shard's lesion crops of the same split, so crop
side and field of view carry no class information (a breast too small for a drawn side gets a few
redraws; the report gives the side quantiles per class so the remaining difference is visible).
Lesion images are therefore processed before normal ones.

Work is split into ``num_shards`` deterministic shards (by full image); within a shard a process pool
handles one image per task. Re-running a shard writes the same bytes. Each case yields patches or one
reject row with a reason, so ``cases in = cases with patches + rejected cases``. Images whose header
declares more than ``max_pixels`` pixels are refused before decoding (``image_too_large``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mammo.components.config import CLASS_NAMES, Config, PatchConfig
from mammo.components.contracts import CASES, MANIFEST, MANIFEST_COLUMNS, REJECTS, shard_name, write_report
from mammo.components.extract_patches.geometry import (
    breast_mask, count_blobs, crop_padded, mask_bbox, mm_to_px, normal_crops, padding_fraction, place_window,
    roi_pixels, scale_bbox, square_around,
)
from mammo.components.imaging import (
    ImageInfo, ImageTooLarge, UnsupportedImage, encode_png, read_image, resize_uint8, resolve_bits, to_uint8,
)
from mammo.components.masks import OK, RESCALED, choose_mask
from mammo.components.runtime import available_cpus
from mammo.components.splits import seeded_rng, stable_hash
from mammo.components.tfrecords import serialize_patch, write_records
from mammo.components.validate_data.checks import patch_intensity_stats

if TYPE_CHECKING:  # pandas is imported where used: spawned workers never need it
    import pandas as pd

log = logging.getLogger(__name__)

#: reject reason of an abnormality whose mask is unusable and that has no usable cropped image
MASK_REJECT_REASON = {"empty": "empty_mask", "size_mismatch": "mask_size_mismatch", "unreadable": "unreadable_mask"}
#: redraws of a normal crop side that does not fit the breast (``unbiased`` protocol)
SIDE_DRAWS = 6


@dataclass
class ExtractReport:
    shard_index: int = 0
    num_shards: int = 1
    protocol: str = "unbiased"
    cases_in: int = 0
    cases_with_patches: int = 0
    cases_rejected: int = 0
    #: full images read (a full image with several abnormalities counts once)
    images: int = 0
    workers: int = 1
    patches_per_class: dict[str, int] = field(default_factory=dict)
    patches_per_split: dict[str, int] = field(default_factory=dict)
    #: mask / cropped / normal
    patch_sources: dict[str, int] = field(default_factory=dict)
    #: ok / swapped / rescaled / empty / size_mismatch / unreadable (abnormal patches only)
    mask_status: dict[str, int] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    #: abnormal patches whose ROI box holds more than one separate region (used whole, warned)
    multi_blob_masks: int = 0
    #: patches with any zero padding, and where the pixel spacing came from (cases / header / default)
    padded_patches: int = 0
    spacing_sources: dict[str, int] = field(default_factory=dict)
    #: crop side in mm per class: 10th, 50th and 90th percentile
    crop_mm_quantiles: dict[str, list[float]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    #: largest peak resident set size of a process that extracted images (interpreter and imports included)
    peak_worker_rss_mb: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class RoiLocation:
    """Where an abnormality is: its box in full-image pixels (None = unusable mask), the mask's status,
    the file to fall back on (the cropped image, or the "mask" when the columns were swapped) and the
    number of separate ROI regions inside the box."""

    bbox: tuple[int, int, int, int] | None
    status: str
    crop_uri: str
    detail: str = ""
    blobs: int = 1


def locate_roi(mask_uri: str, crop_uri: str, image_shape: tuple[int, int], tolerance: float,
               max_pixels: int | None = None) -> RoiLocation:
    """Find the abnormality's bounding box from its ROI mask; which file is the mask is decided by
    :func:`mammo.components.masks.choose_mask` (the rule ingest uses too)."""
    try:
        mask, _ = read_image(mask_uri, max_pixels)
    except Exception as exc:  # pydicom / PIL raise several types
        return RoiLocation(None, "unreadable", crop_uri, f"ROI mask {Path(mask_uri).name}: {type(exc).__name__}: {exc}")
    candidates = {"mask": mask}
    if mask.shape != image_shape and crop_uri:
        # the CSVs swap the crop and mask columns in many rows: the mask has (about) the image's size
        try:
            candidates["crop"] = read_image(crop_uri, max_pixels)[0]
        except Exception:
            pass
    choice = choose_mask([(k, a.shape) for k, a in candidates.items()], image_shape, tolerance)
    if choice.mask is None:
        detail = f"ROI mask is {mask.shape[0]}x{mask.shape[1]}, image {image_shape[0]}x{image_shape[1]}"
        return RoiLocation(None, "size_mismatch", crop_uri, detail + f" (more than {tolerance:.0%} apart)")
    if choice.mask == "crop":
        mask, crop_uri = candidates["crop"], mask_uri
    status = "swapped" if choice.mask == "crop" and choice.fit.status == OK else choice.fit.status
    roi = roi_pixels(mask)
    bbox = mask_bbox(roi)
    if bbox is None:
        return RoiLocation(None, "empty", crop_uri, "ROI mask has no non-zero pixel")
    blobs = count_blobs(roi, bbox)
    if choice.fit.status == RESCALED:
        bbox = scale_bbox(bbox, mask.shape, image_shape)
    return RoiLocation(bbox, status, crop_uri, "" if status == OK else choice.fit.detail, blobs)


def pixel_spacing(row: dict, info: ImageInfo, cfg: PatchConfig) -> tuple[float, str]:
    """(mm per pixel, where it came from): the ``cases`` row (with ingest's ``pixel_spacing_source``), the
    file header, or the per-source default."""
    value = row.get("pixel_spacing_mm")
    try:
        if value is not None and np.isfinite(float(value)) and float(value) > 0:
            return float(value), str(row.get("pixel_spacing_source") or "cases")
    except (TypeError, ValueError):
        pass
    if info.pixel_spacing_mm:
        return float(info.pixel_spacing_mm), "header"
    defaults, source = cfg.spacing_defaults(), str(row.get("source") or "")
    mm = defaults.get(source, defaults.get("all"))  # the rule ingest's image_spacing applies too
    if mm:
        return mm, "default"
    raise ValueError(f"{row.get('case_id')}: no pixel spacing in cases or header, and no default for source "
                     f"{source!r} in patches.default_pixel_spacing_mm")


# -- per image work (runs in worker processes) ---------------------------------------------------


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux ``VmHWM``: the process's own, also
    in a spawned worker; elsewhere ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


#: one unit of work: the cases of one full image, the patch settings, the seed, and the lesion crop
#: sides (mm) per split that normal crops are drawn from (``unbiased``; empty for lesion images)
Job = tuple[list[dict], dict, int, dict[str, list[float]]]


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None and float(value) == float(value) else None
    except (TypeError, ValueError):
        return None


def _reject(row: dict, reason: str, message: str) -> dict:
    return {"case_id": row["case_id"], "reject": reason, "message": message}


def _patches_for_image(job: Job) -> tuple[list[dict], float]:
    """All patches (or rejects) of the cases sharing one full image, and this process's peak RSS (MB)."""
    rows, cfg_dict, seed, lesion_sides = job
    cfg = PatchConfig(**cfg_dict)
    out: list[dict] = []
    try:
        pixels, info = read_image(rows[0]["image_uri"], cfg.max_pixels)
    except ImageTooLarge as exc:
        return [_reject(r, "image_too_large", str(exc)) for r in rows], _peak_rss_mb()
    except UnsupportedImage as exc:
        return [_reject(r, "unsupported_image", str(exc)) for r in rows], _peak_rss_mb()
    except Exception as exc:
        return [_reject(r, "unreadable_image", f"{type(exc).__name__}: {exc}") for r in rows], _peak_rss_mb()
    meta_bits = _int_or_none(rows[0].get("bits_stored"))
    bits = resolve_bits(pixels, info.bits_stored, meta_bits)
    if meta_bits and meta_bits != bits:
        log.warning("%s: mapped as %d-bit (the file's depth); cases said %s", rows[0]["image_uri"], bits, meta_bits)
    for row in rows:
        try:
            spacing = pixel_spacing(row, info, cfg)
            out.extend(_abnormal_patch(row, pixels, bits, info, spacing, cfg) if row["label"] != "normal"
                       else _normal_patches(row, pixels, bits, info, spacing, cfg, seed, lesion_sides))
        except Exception as exc:  # one bad case must not lose the others of the image
            out.append(_reject(row, "extract_failed", f"{type(exc).__name__}: {exc}"))
    return out, _peak_rss_mb()


def _abnormal_patch(row: dict, pixels: np.ndarray, bits: int, info: ImageInfo, spacing: tuple[float, str],
                    cfg: PatchConfig) -> list[dict]:
    roi = locate_roi(row["roi_mask_uri"], row.get("cropped_uri") or "", pixels.shape, cfg.mask_rescale_tolerance,
                     cfg.max_pixels)
    if roi.status != "ok":
        log.info("%s: ROI mask %s%s", row["case_id"], roi.status, f" ({roi.detail})" if roi.detail else "")
    if roi.blobs > 1:
        log.warning("%s: ROI mask holds %d separate regions; one box over all of them is used", row["case_id"],
                    roi.blobs)
    mm = spacing[0]
    if roi.bbox is not None:
        y0, x0, side = square_around(roi.bbox, cfg.context_margin, mm_to_px(cfg.min_crop_mm, mm))
        if cfg.protocol == "unbiased":
            y0, x0 = place_window(y0, x0, side, pixels.shape)
        padding = padding_fraction(y0, x0, side, pixels.shape)
        crop = crop_padded(pixels, y0, x0, side)
        crop_bits, crop_info, source = bits, info, "mask"
    else:
        crop, crop_info = _read_fallback_crop(roi.crop_uri, pixels.shape, cfg.max_pixels)
        if crop is None:
            return [_reject(row, MASK_REJECT_REASON[roi.status], f"{roi.detail}; no usable cropped image ({crop_info})")]
        y0 = x0 = -1
        side = max(crop.shape)
        cy0, cx0 = (crop.shape[0] - side) // 2, (crop.shape[1] - side) // 2
        padding = padding_fraction(cy0, cx0, side, crop.shape)
        crop = crop_padded(crop, cy0, cx0, side)
        # the crop's own header says how to map it (it normally matches the full image's)
        crop_bits, source = resolve_bits(crop, crop_info.bits_stored), "cropped"
    patch = resize_uint8(to_uint8(crop, crop_bits, crop_info.photometric, crop_info.signed), cfg.image_size)
    return [_patch_record(row, row["case_id"], patch, source, roi.status, y0, x0, side, bits, spacing, padding,
                          cfg.protocol, roi.blobs if roi.bbox is not None else 0)]


def _read_fallback_crop(crop_uri: str, image_shape: tuple[int, int], max_pixels: int | None):
    """(pixels, info) of the cropped-image DICOM, or (None, why not)."""
    if not crop_uri:
        return None, "none listed"
    try:
        crop, info = read_image(crop_uri, max_pixels)
    except Exception as exc:
        return None, f"{Path(crop_uri).name}: {type(exc).__name__}"
    if crop.shape == image_shape:  # the full-size file is a mask, not a crop
        return None, f"{Path(crop_uri).name} has the full image's size"
    return crop, info


def split_key(row: dict) -> str:
    """The split a patch ends up in: ingest's ``subset`` (train / validation / test), else the official split."""
    return str(row.get("subset") or row.get("split") or "")


def _normal_sides_mm(row: dict, cfg: PatchConfig, lesion_sides: dict[str, list[float]],
                     rng: np.random.Generator) -> list[float]:
    """Candidate crop sides (mm) for one normal image: ``normal_crop_mm`` under ``paper`` or without lesion
    crops to draw from; else seeded draws from the lesion sides of the same split (any split if none)."""
    pool = lesion_sides.get(split_key(row)) or [s for sides in lesion_sides.values() for s in sides]
    if cfg.protocol == "paper" or not pool:
        return [cfg.normal_crop_mm]
    return [float(v) for v in rng.choice(np.asarray(sorted(pool)), size=SIDE_DRAWS * max(1, cfg.normal_patches_per_image))]


def _normal_patches(row: dict, pixels: np.ndarray, bits: int, info: ImageInfo, spacing: tuple[float, str],
                    cfg: PatchConfig, seed: int, lesion_sides: dict[str, list[float]]) -> list[dict]:
    image8 = to_uint8(pixels, bits, info.photometric, info.signed)
    tissue = breast_mask(image8)
    rng = seeded_rng(row["case_id"], seed)
    sides_mm = _normal_sides_mm(row, cfg, lesion_sides, rng)
    fixed = len(sides_mm) == 1
    corners: list[tuple[int, int, int]] = []
    for side_mm in sides_mm:
        if len(corners) >= cfg.normal_patches_per_image:
            break
        side = mm_to_px(side_mm, spacing[0])
        want = cfg.normal_patches_per_image - len(corners) if fixed else 1
        for y, x in normal_crops(tissue, want, side, cfg.min_tissue_fraction, rng):
            if all((y, x, side) != c for c in corners):
                corners.append((y, x, side))
    if not corners:
        lo, hi = min(sides_mm), max(sides_mm)
        shown = f"{lo:.1f} mm" if lo == hi else f"{lo:.1f}-{hi:.1f} mm"
        return [_reject(row, "no_tissue_crop", f"no {shown} crop with >= {cfg.min_tissue_fraction:.0%} tissue")]
    return [
        _patch_record(row, f"{row['case_id']}#{k}", resize_uint8(image8[y : y + side, x : x + side], cfg.image_size),
                      "normal", "", y, x, side, bits, spacing, 0.0, cfg.protocol, 0)
        for k, (y, x, side) in enumerate(corners)
    ]


def _patch_record(row: dict, patch_id: str, patch: np.ndarray, source: str, mask_status: str, y0: int, x0: int,
                  side: int, bits: int, spacing: tuple[float, str], padding: float, protocol: str,
                  blobs: int) -> dict:
    return {
        "patch_id": patch_id, "case_id": row["case_id"], "patient_id": row["patient_id"], "label": row["label"],
        "label_index": int(row["label_index"]), "split": row["split"], "subset": row.get("subset"),
        "source": row["source"], "scanner": row.get("scanner") or "", "abnormality_type": row.get("abnormality_type"),
        "view": row.get("view"), "breast_density": row.get("breast_density"), "bits_stored": int(bits),
        "patch_source": source, "mask_status": mask_status, "crop_y0": y0, "crop_x0": x0, "crop_size": side,
        "crop_mm": round(side * spacing[0], 3), "padding_fraction": float(padding), "pixel_spacing_mm": spacing[0],
        "spacing_source": spacing[1], "mask_blobs": int(blobs), "protocol": protocol, **patch_intensity_stats(patch),
        "png": encode_png(patch),
    }


# -- the step ------------------------------------------------------------------------------------


def shard_of(key: str, num_shards: int) -> int:
    """Stable shard of a full image (all abnormalities of an image go to the same shard)."""
    return stable_hash(key) % num_shards


def plan_jobs(cases: "pd.DataFrame", cfg: PatchConfig, seed: int, shard_index: int = 0,
              num_shards: int = 1) -> tuple["pd.DataFrame", list[Job], list[Job]]:
    """The cases of one shard and its work items, one per full image in image order: lesion images,
    then normal images (whose jobs get the lesion sides filled in by :func:`extract`)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    # normals: CC views only (the paper's normal class); MLO normals are not used
    cases = cases[(cases["label"] != "normal") | (cases["view"] == "CC")]
    cases = cases[[shard_of(u, num_shards) == shard_index for u in cases["image_uri"]]]
    records = cases.astype(object).where(cases.notna(), None).to_dict("records")
    by_image: dict[str, list[dict]] = {}
    for r in records:
        by_image.setdefault(r["image_uri"], []).append(r)
    lesion, normal = [], []
    for _, rows in sorted(by_image.items()):
        (normal if rows[0]["label"] == "normal" else lesion).append((rows, asdict(cfg), seed, {}))
    return cases, lesion, normal


def job_pool(workers: int) -> "contextlib.AbstractContextManager[ProcessPoolExecutor | None]":
    """One pool of *spawned* processes for the whole shard when ``workers > 1`` (forking a process that
    has loaded TensorFlow can deadlock, and a spawned worker's peak RSS is its own); else None (this process)."""
    import multiprocessing

    if workers <= 1:
        return contextlib.nullcontext()
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def run_jobs(jobs: list[Job], pool: ProcessPoolExecutor | None, progress: bool = False) -> tuple[list[dict], float]:
    """Results of every job, in job order (one image per task on ``pool``, else in this process), and the
    largest peak RSS (MB) of a process that ran one."""
    from tqdm import tqdm

    results: list[dict] = []
    peak = 0.0
    done = pool.map(_patches_for_image, jobs, chunksize=1) if pool and jobs else map(_patches_for_image, jobs)
    for res, rss in tqdm(done, total=len(jobs), desc="extract", unit="img", disable=not progress or not jobs):
        results.extend(res)
        peak = max(peak, rss)
    return results, peak


def lesion_sides_by_split(patches: list[dict]) -> dict[str, list[float]]:
    """Crop sides (mm) of the lesion patches, per split (what ``unbiased`` normal crops are drawn from)."""
    sides: dict[str, list[float]] = {}
    for p in patches:
        if p.get("patch_source") in ("mask", "cropped"):
            sides.setdefault(split_key(p), []).append(float(p["crop_mm"]))
    return sides


def run(cases: str | Path, patches: str | Path, cfg: Config, shard_index: int = 0, num_shards: int = 1,
        workers: int = 0, progress: bool = True) -> ExtractReport:
    """Extract one shard of patches from an ingest output (``cases``) into the ``patches`` artifact:
    TFRecord files, the manifest, rejects, previews and ``report.json``.

    ``workers = 0`` uses the cores this pod may use (:func:`~mammo.components.runtime.available_cpus`).
    Re-running a shard with the same inputs and settings writes the same bytes, whatever the number
    of workers.
    """
    import pandas as pd

    from mammo.components.extract_patches.preview import write_previews

    pcfg = cfg.patches
    start = time.time()
    table, lesion_jobs, normal_jobs = plan_jobs(pd.read_parquet(Path(cases) / CASES), pcfg, cfg.seed, shard_index,
                                                num_shards)
    out_dir = Path(patches)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_images = len(lesion_jobs) + len(normal_jobs)
    # 0 = the pod's CPU request (MAMMO_CPUS, set by the pipeline) or the cgroup quota, not the node's cores
    workers = max(1, min(workers or available_cpus(), n_images))
    report = ExtractReport(shard_index=shard_index, num_shards=num_shards, protocol=pcfg.protocol,
                           cases_in=len(table), images=n_images, workers=workers)
    log.info("shard %d/%d: %d cases on %d images, %d workers", shard_index, num_shards, len(table), n_images, workers)
    with job_pool(workers) as pool:  # one pool for both passes: its workers import the code once
        results, peak_a = run_jobs(lesion_jobs, pool, progress)
        sides = lesion_sides_by_split([r for r in results if "reject" not in r])
        normal_results, peak_b = run_jobs([(rows, c, s, sides) for rows, c, s, _ in normal_jobs], pool, progress)
    results += normal_results
    report.peak_worker_rss_mb = max(peak_a, peak_b)

    found = [r for r in results if "reject" not in r]
    rejects = pd.DataFrame([{"case_id": r["case_id"], "reason": r["reject"], "message": r["message"]}
                            for r in results if "reject" in r], columns=["case_id", "reason", "message"])
    report.cases_with_patches = len({p["case_id"] for p in found})
    report.cases_rejected = int(rejects["case_id"].nunique())
    report.reject_reasons = rejects["reason"].value_counts().to_dict()
    if report.cases_with_patches + report.cases_rejected != report.cases_in:
        raise RuntimeError(f"lost cases: {report.cases_in} in, {report.cases_with_patches} with patches, "
                           f"{report.cases_rejected} rejected")
    for _, r in rejects.iterrows():
        log.warning("extract reject %s: %s: %s", r["case_id"], r["reason"], r["message"])

    _write_shards(found, out_dir, pcfg.records_per_shard, shard_index, num_shards, report)
    manifest = pd.DataFrame([{k: v for k, v in p.items() if k != "png"} for p in found], columns=MANIFEST_COLUMNS)
    manifest.to_parquet(out_dir / MANIFEST, index=False)
    rejects.to_parquet(out_dir / REJECTS, index=False)
    write_previews(found, out_dir, shard_index=shard_index, num_shards=num_shards, protocol=pcfg.protocol)
    _summarise(manifest, report)
    report.seconds = round(time.time() - start, 2)
    write_report(out_dir, "extract_patches", asdict(report))
    log.info("shard %d: %d patches %s from %d images in %.1fs (%d workers, peak %.0f MB per worker)",
             shard_index, len(found), report.patches_per_class, report.images, report.seconds, workers,
             report.peak_worker_rss_mb)
    return report


def _summarise(manifest: "pd.DataFrame", report: ExtractReport) -> None:
    report.patches_per_class = {c: int((manifest["label"] == c).sum()) for c in CLASS_NAMES}
    report.patches_per_split = manifest["split"].value_counts().to_dict()
    report.patch_sources = manifest["patch_source"].value_counts().to_dict()
    report.mask_status = manifest.loc[manifest["mask_status"] != "", "mask_status"].value_counts().to_dict()
    report.multi_blob_masks = int((manifest["mask_blobs"] > 1).sum())
    report.padded_patches = int((manifest["padding_fraction"] > 0).sum())
    report.spacing_sources = manifest["spacing_source"].value_counts().to_dict()
    report.crop_mm_quantiles = {
        c: [round(float(q), 2) for q in np.quantile(group["crop_mm"].astype(float), [0.1, 0.5, 0.9])]
        for c, group in manifest.groupby("label")
    }


def _write_shards(patches: list[dict], out_dir: Path, per_file: int, shard_index: int, num_shards: int,
                  report: ExtractReport) -> None:
    patches.sort(key=lambda p: p["patch_id"])  # deterministic order whatever the pool did
    n_files = max(1, -(-len(patches) // per_file))
    for f in range(n_files):
        name = shard_name(shard_index, num_shards, f)
        chunk = patches[f * per_file : (f + 1) * per_file]
        for i, p in enumerate(chunk):
            p["file"], p["record_index"] = name, i
        write_records(out_dir / name, (serialize_patch(p["png"], p["label_index"], p) for p in chunk))
        report.files.append(name)
