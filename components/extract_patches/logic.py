"""Patch extraction: ROI-centred crops of abnormalities, tissue crops of normal CC views.

Abnormal patch (one per abnormality, also when an image carries several): the bounding box of the
ROI mask (its pixels above half the mask's maximum: 0/1, 0/255 and JPEG masks alike), a square
crop centred on it whose side is ``max(bbox h, bbox w) * (1 + context_margin)`` (at least
``min_crop_size``), zero-padded where it crosses the image border (zero = background
after the 8-bit mapping), mapped to 8 bits (:func:`mammo.components.imaging.to_uint8`: fixed per
bit depth, MONOCHROME1 inverted) and resampled to ``image_size`` with PIL's Lanczos filter (which
anti-aliases when it shrinks).

Which file is the ROI mask, and what happens when it is unusable (``mask_status`` in the manifest):

* ``ok``: the row's ROI mask has the full image's size.
* ``swapped``: the row's *cropped-image* file has the full image's size and its "mask" does not:
  the CSV swapped the two columns (ingest already sorts this out by size; extraction checks again
  so that ``cases`` tables from elsewhere are safe).
* ``rescaled``: the mask's rows and columns each differ from the image's by at most
  ``mask_rescale_tolerance`` (default 2%). **Choice: such a mask is rescaled, not rejected.** Its
  bounding box is stretched by the row and column ratios (what resizing the mask to the image's
  size would give), because a few pixels of size difference move the box by a few pixels, well
  inside the context margin, while rejecting would lose the abnormality. A larger difference
  means the mask belongs to another image or is corrupt: ``size_mismatch``, not used.
  Note: ingest currently rejects every row whose series has no file of the image's size
  (``mask_size_mismatch``), so ``rescaled`` only occurs for ``cases`` that let such rows through.
* ``empty`` / ``size_mismatch`` / ``unreadable``: the mask is not used; the abnormality's
  cropped-image DICOM is the fallback (``patch_source = "cropped"``: padded to a square around its
  own centre, so the lesion is centred but the context is whatever the crop holds). With no usable
  cropped image either, the case is rejected with reason ``empty_mask`` / ``mask_size_mismatch`` /
  ``unreadable_mask``.

Normal patch: only CC views (as in the paper). The breast mask is Otsu's threshold of the 8-bit
image, reduced to its largest connected component (film labels and markers drop out) with its
holes filled (fat inside the breast is breast, not background). Crops of ``normal_crop_size`` are
drawn around the breast's centre of mass (deterministic per seed and case) and kept only if at least
``min_tissue_fraction`` (default 1.0: no background at all) of the crop lies inside the breast mask.

Work is split into ``num_shards`` deterministic shards (by full image), so a ``ParallelFor`` can
fan it out; within a shard, images are processed by a process pool (one image per task, results in
image order). Re-running a shard writes the same bytes. Each case yields patches or one reject row
with a reason, so ``cases in = cases with patches + rejected cases``. The report records the
images processed and the peak resident memory of a worker process (``benchmarks/bench_extract.py``
measures throughput and memory on full-size images).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mammo.components.contracts import write_report
from mammo.components.config import CLASS_NAMES, PatchConfig
from mammo.components.imaging import encode_png, read_image, resize_uint8, to_uint8
from mammo.components.tfrecords import serialize_patch, write_records

if TYPE_CHECKING:  # pandas is imported where used: spawned workers never need it
    import pandas as pd

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "patch_id", "case_id", "patient_id", "label", "label_index", "split", "subset", "source", "scanner",
    "abnormality_type", "view", "breast_density", "bits_stored", "patch_source", "mask_status", "crop_y0", "crop_x0", "crop_size", "file", "record_index",
]

#: reject reason of an abnormality whose mask is unusable and that has no usable cropped image
MASK_REJECT_REASON = {"empty": "empty_mask", "size_mismatch": "mask_size_mismatch", "unreadable": "unreadable_mask"}


@dataclass
class ExtractReport:
    shard_index: int = 0
    num_shards: int = 1
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
    files: list[str] = field(default_factory=list)
    #: largest peak resident set size of a process that extracted images (the pool's workers, or
    #: this process when ``workers == 1``), interpreter and imports included
    peak_worker_rss_mb: float = 0.0
    seconds: float = 0.0


# -- geometry (pure, unit-tested) ----------------------------------------------------------------


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) half-open bounding box of the non-zero mask pixels, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def scale_bbox(bbox: tuple[int, int, int, int], mask_shape: tuple[int, int],
               image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box a mask of ``mask_shape`` would have after resizing it to ``image_shape``."""
    fy, fx = image_shape[0] / mask_shape[0], image_shape[1] / mask_shape[1]
    y0, x0, y1, x1 = bbox
    return (int(np.floor(y0 * fy)), int(np.floor(x0 * fx)),
            min(image_shape[0], int(np.ceil(y1 * fy))), min(image_shape[1], int(np.ceil(x1 * fx))))


def size_within(shape: tuple[int, ...], target: tuple[int, ...], tolerance: float) -> bool:
    """Whether every side of ``shape`` is within ``tolerance`` (a share) of ``target``'s."""
    return len(shape) == len(target) and all(abs(a - b) <= tolerance * b for a, b in zip(shape, target))


def square_around(bbox: tuple[int, int, int, int], margin: float, min_size: int) -> tuple[int, int, int]:
    """(y0, x0, side) of the square centred on ``bbox`` with ``margin`` context; may leave the image."""
    y0, x0, y1, x1 = bbox
    side = int(round(max(y1 - y0, x1 - x0) * (1.0 + margin)))
    side = max(side, min_size)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    return int(round(cy - side / 2.0)), int(round(cx - side / 2.0)), side


def crop_padded(image: np.ndarray, y0: int, x0: int, side: int) -> np.ndarray:
    """Square crop; parts outside the image are zero (background)."""
    out = np.zeros((side, side), dtype=image.dtype)
    h, w = image.shape
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y0 + side, h), min(x0 + side, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def breast_mask(image8: np.ndarray) -> np.ndarray:
    """The breast: Otsu's threshold, its largest connected component, holes filled.

    The largest component drops film labels and markers (bright, but apart from the breast); the
    filled holes keep fatty tissue darker than Otsu's threshold inside the breast, so a crop of a
    fatty breast is not taken for background. Otsu's threshold comes from the histogram of every
    second pixel in each direction (the same threshold for any real image, a quarter of the work).
    A full-size image takes ~0.3 s; the largest temporaries are two int32 label images.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    if image8.max() == image8.min():
        return np.zeros(image8.shape, dtype=bool)
    sample = image8[::2, ::2] if min(image8.shape) >= 64 else image8
    hist = np.bincount(np.asarray(sample, dtype=np.uint8).ravel(), minlength=256)
    breast = image8 > threshold_otsu(hist=hist)
    labels, n = ndimage.label(breast)
    if n > 1:
        sizes = ndimage.histogram(labels, 0.5, n + 0.5, n)  # pixels of labels 1..n
        breast = labels == int(np.argmax(sizes)) + 1
    del labels
    # holes = background components that do not touch the image border
    background, n_bg = ndimage.label(~breast)
    if n_bg > 1:
        outside = np.zeros(n_bg + 1, dtype=bool)
        for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
            outside[edge] = True
        outside[0] = True  # label 0 = the breast itself
        breast |= ~np.take(outside, background)
    return breast


def normal_crops(tissue: np.ndarray, n: int, side: int, min_fraction: float, rng: np.random.Generator,
                 attempts: int = 200) -> list[tuple[int, int]]:
    """Up to ``n`` top-left corners of ``side``-squares that are at least ``min_fraction`` tissue.

    Candidates are drawn around the tissue's centre of mass (the middle of the breast), spreading
    out as attempts fail. Each candidate is checked by counting its tissue pixels (a few hundred
    microseconds for a 600 px square; cheaper than a full-size summed-area table, which would cost
    more time and 4 bytes a pixel, for the handful of candidates a breast needs).
    """
    h, w = tissue.shape
    if side > h or side > w or not tissue.any():
        return []
    # centre of mass and spread from the row / column marginals (no coordinate arrays)
    per_row, per_col = tissue.sum(axis=1, dtype=np.int64), tissue.sum(axis=0, dtype=np.int64)
    total = float(per_row.sum())
    ry, rx = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    cy, cx = float(per_row @ ry) / total, float(per_col @ rx) / total
    spread = max(np.sqrt(float(per_row @ (ry - cy) ** 2) / total), np.sqrt(float(per_col @ (rx - cx) ** 2) / total))
    need = min_fraction * side * side
    found: list[tuple[int, int]] = []
    for k in range(attempts):
        if len(found) >= n:
            break
        scale = spread * (0.25 + 1.5 * k / attempts)
        y = int(np.clip(rng.normal(cy, scale) - side / 2, 0, h - side))
        x = int(np.clip(rng.normal(cx, scale) - side / 2, 0, w - side))
        if (y, x) not in found and np.count_nonzero(tissue[y : y + side, x : x + side]) >= need:
            found.append((y, x))
    return found


def roi_pixels(mask: np.ndarray) -> np.ndarray:
    """The ROI of a mask image: values above half its maximum (0/1 and 0/255 masks alike; the
    faint ringing around a JPEG-compressed mask's edge stays outside)."""
    top = int(mask.max()) if mask.size else 0
    return mask > (top // 2 if top > 1 else 0)


@dataclass(frozen=True)
class RoiLocation:
    """Where an abnormality is: its box in full-image pixels (None = unusable mask), the mask's status
    (see the module docstring) and the file to fall back on (the row's cropped image, or its "mask"
    when the columns were swapped)."""

    bbox: tuple[int, int, int, int] | None
    status: str
    crop_uri: str
    detail: str = ""


def locate_roi(mask_uri: str, crop_uri: str, image_shape: tuple[int, int], tolerance: float) -> RoiLocation:
    """Find the abnormality's bounding box from its ROI mask, telling mask and crop apart by size."""
    try:
        mask, _ = read_image(mask_uri)
    except Exception as exc:  # pydicom / PIL raise several types
        return RoiLocation(None, "unreadable", crop_uri, f"ROI mask {Path(mask_uri).name}: {type(exc).__name__}: {exc}")
    status = "ok"
    if mask.shape != image_shape and crop_uri:
        # the CSVs swap the crop and mask columns in many rows: the mask has the image's size
        try:
            other, _ = read_image(crop_uri)
        except Exception:
            other = None
        if other is not None and other.shape == image_shape:
            mask, status, crop_uri = other, "swapped", mask_uri
    if mask.shape != image_shape:
        detail = f"ROI mask is {mask.shape[0]}x{mask.shape[1]}, image {image_shape[0]}x{image_shape[1]}"
        if not size_within(mask.shape, image_shape, tolerance):
            return RoiLocation(None, "size_mismatch", crop_uri, detail + f" (more than {tolerance:.0%} apart)")
        bbox = mask_bbox(roi_pixels(mask))
        if bbox is None:
            return RoiLocation(None, "empty", crop_uri, "ROI mask has no non-zero pixel")
        return RoiLocation(scale_bbox(bbox, mask.shape, image_shape), "rescaled", crop_uri, detail + ", rescaled")
    bbox = mask_bbox(roi_pixels(mask))
    if bbox is None:
        return RoiLocation(None, "empty", crop_uri, "ROI mask has no non-zero pixel")
    return RoiLocation(bbox, status, crop_uri)


def _rng_for(case_id: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# -- per image work (runs in worker processes) ---------------------------------------------------


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Linux: ``VmHWM`` of ``/proc/self/status``, which belongs to the process's own address space
    (``ru_maxrss`` survives ``exec``, so a spawned worker would report its parent's peak).
    Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
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


def _patches_for_image(job: tuple[list[dict], dict, int]) -> tuple[list[dict], float]:
    """All patches (or rejects) of the cases sharing one full image, and this process's peak RSS (MB)."""
    rows, cfg_dict, seed = job
    cfg = PatchConfig(**cfg_dict)
    out: list[dict] = []
    try:
        pixels, info = read_image(rows[0]["image_uri"])
    except Exception as exc:
        return [{"case_id": r["case_id"], "reject": "unreadable_image", "message": f"{type(exc).__name__}: {exc}"}
                for r in rows], _peak_rss_mb()
    bits = int(rows[0].get("bits_stored") or info.bits_stored)
    for row in rows:
        try:
            out.extend(_abnormal_patch(row, pixels, bits, info.photometric, cfg) if row["label"] != "normal"
                       else _normal_patches(row, pixels, bits, info.photometric, cfg, seed))
        except Exception as exc:  # one bad case must not lose the others of the image
            out.append({"case_id": row["case_id"], "reject": "extract_failed", "message": f"{type(exc).__name__}: {exc}"})
    return out, _peak_rss_mb()


def _abnormal_patch(row: dict, pixels: np.ndarray, bits: int, photometric: str, cfg: PatchConfig) -> list[dict]:
    roi = locate_roi(row["roi_mask_uri"], row.get("cropped_uri") or "", pixels.shape, cfg.mask_rescale_tolerance)
    if roi.status != "ok":
        log.info("%s: ROI mask %s%s", row["case_id"], roi.status, f" ({roi.detail})" if roi.detail else "")
    if roi.bbox is not None:
        y0, x0, side = square_around(roi.bbox, cfg.context_margin, cfg.min_crop_size)
        crop = crop_padded(pixels, y0, x0, side)
        crop_bits, crop_photometric, source = bits, photometric, "mask"
    else:
        crop, crop_info = _read_fallback_crop(roi.crop_uri, pixels.shape)
        if crop is None:
            return [{"case_id": row["case_id"], "reject": MASK_REJECT_REASON[roi.status],
                     "message": f"{roi.detail}; no usable cropped image ({crop_info})"}]
        y0 = x0 = -1
        side = max(crop.shape)
        crop = crop_padded(crop, (crop.shape[0] - side) // 2, (crop.shape[1] - side) // 2, side)
        # the crop's own header says how to map it (it normally matches the full image's)
        crop_bits, crop_photometric, source = crop_info.bits_stored, crop_info.photometric, "cropped"
    patch = resize_uint8(to_uint8(crop, crop_bits, crop_photometric), cfg.image_size)
    return [_patch_record(row, row["case_id"], patch, source, roi.status, y0, x0, side, bits)]


def _read_fallback_crop(crop_uri: str, image_shape: tuple[int, int]):
    """(pixels, info) of the cropped-image DICOM, or (None, why not)."""
    if not crop_uri:
        return None, "none listed"
    try:
        crop, info = read_image(crop_uri)
    except Exception as exc:
        return None, f"{Path(crop_uri).name}: {type(exc).__name__}"
    if crop.shape == image_shape:  # the full-size file is a mask, not a crop
        return None, f"{Path(crop_uri).name} has the full image's size"
    return crop, info


def _normal_patches(row: dict, pixels: np.ndarray, bits: int, photometric: str, cfg: PatchConfig,
                    seed: int) -> list[dict]:
    image8 = to_uint8(pixels, bits, photometric)
    corners = normal_crops(breast_mask(image8), cfg.normal_patches_per_image, cfg.normal_crop_size,
                           cfg.min_tissue_fraction, _rng_for(row["case_id"], seed))
    if not corners:
        return [{"case_id": row["case_id"], "reject": "no_tissue_crop",
                 "message": f"no {cfg.normal_crop_size}px crop with >= {cfg.min_tissue_fraction:.0%} tissue"}]
    side = cfg.normal_crop_size
    return [
        _patch_record(row, f"{row['case_id']}#{k}", resize_uint8(image8[y : y + side, x : x + side], cfg.image_size),
                      "normal", "", y, x, side, bits)
        for k, (y, x) in enumerate(corners)
    ]


def _patch_record(row: dict, patch_id: str, patch: np.ndarray, source: str, mask_status: str, y0: int, x0: int,
                  side: int, bits: int) -> dict:
    return {
        "patch_id": patch_id, "case_id": row["case_id"], "patient_id": row["patient_id"], "label": row["label"],
        "label_index": int(row["label_index"]), "split": row["split"], "subset": row.get("subset"),
        "source": row["source"], "scanner": row.get("scanner") or "", "abnormality_type": row.get("abnormality_type"),
        "view": row.get("view"), "breast_density": row.get("breast_density"), "bits_stored": int(bits), "patch_source": source,
        "mask_status": mask_status, "crop_y0": y0, "crop_x0": x0, "crop_size": side, "png": encode_png(patch),
    }


# -- the step ------------------------------------------------------------------------------------


def shard_of(key: str, num_shards: int) -> int:
    """Stable shard of a full image (all abnormalities of an image go to the same shard)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % num_shards


def plan_jobs(cases: "pd.DataFrame", cfg: PatchConfig, seed: int, shard_index: int = 0,
              num_shards: int = 1) -> tuple["pd.DataFrame", list[tuple[list[dict], dict, int]]]:
    """The cases of one shard and its work items: one per full image, in image order."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    # normals: CC views only (the paper's normal class); MLO normals are not used
    cases = cases[(cases["label"] != "normal") | (cases["view"] == "CC")]
    cases = cases[[shard_of(u, num_shards) == shard_index for u in cases["image_uri"]]]
    records = cases.astype(object).where(cases.notna(), None).to_dict("records")
    by_image: dict[str, list[dict]] = {}
    for r in records:
        by_image.setdefault(r["image_uri"], []).append(r)
    return cases, [(rows, asdict(cfg), seed) for _, rows in sorted(by_image.items())]


def run_jobs(jobs: list, workers: int, progress: bool = False, pool: bool | None = None) -> tuple[list[dict], float]:
    """Results of every job, in job order, and the largest peak RSS (MB) of a process that ran one.

    ``workers > 1``: a pool of *spawned* processes, one image per task (images are heavy, so the
    task overhead is negligible and the load stays even). Spawned, not forked: forking a process
    that has already loaded TensorFlow (threads) can deadlock, and a spawned worker's peak RSS is
    its own (a forked one counts the parent's pages too). ``workers == 1``: in this process, unless
    ``pool`` is true (``pool`` defaults to ``workers > 1``).
    """
    import multiprocessing

    from tqdm import tqdm

    results: list[dict] = []
    peak = 0.0
    use_pool = workers > 1 if pool is None else pool
    if use_pool:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as executor:
            for res, rss in tqdm(executor.map(_patches_for_image, jobs, chunksize=1), total=len(jobs),
                                 desc="extract", unit="img", disable=not progress):
                results.extend(res)
                peak = max(peak, rss)
    else:
        for job in tqdm(jobs, desc="extract", unit="img", disable=not progress):
            res, rss = _patches_for_image(job)
            results.extend(res)
            peak = max(peak, rss)
    return results, peak


def extract_patches(cases_path: str | Path, out_dir: str | Path, cfg: PatchConfig, seed: int,
                    shard_index: int = 0, num_shards: int = 1, workers: int = 0,
                    progress: bool = True) -> ExtractReport:
    """Extract the patches of one shard into TFRecord files + ``manifest.parquet`` + previews.

    ``workers = 0`` uses every core. Re-running a shard with the same inputs and settings writes
    the same bytes, whatever the number of workers.
    """
    import pandas as pd

    start = time.time()
    cases, jobs = plan_jobs(pd.read_parquet(cases_path), cfg, seed, shard_index, num_shards)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    report = ExtractReport(shard_index=shard_index, num_shards=num_shards, cases_in=len(cases), images=len(jobs),
                           workers=workers)
    log.info("shard %d/%d: %d cases on %d images, %d workers", shard_index, num_shards, len(cases), len(jobs), workers)
    results, report.peak_worker_rss_mb = run_jobs(jobs, workers, progress)

    patches = [r for r in results if "reject" not in r]
    rejects = pd.DataFrame(
        [{"case_id": r["case_id"], "reason": r["reject"], "message": r["message"]} for r in results if "reject" in r],
        columns=["case_id", "reason", "message"],
    )
    patched_cases = {p["case_id"] for p in patches}
    report.cases_with_patches = len(patched_cases)
    report.cases_rejected = int(rejects["case_id"].nunique())
    report.reject_reasons = rejects["reason"].value_counts().to_dict()
    if report.cases_with_patches + report.cases_rejected != report.cases_in:
        raise RuntimeError(f"lost cases: {report.cases_in} in, {report.cases_with_patches} with patches, "
                           f"{report.cases_rejected} rejected")
    for _, r in rejects.iterrows():
        log.warning("extract reject %s: %s: %s", r["case_id"], r["reason"], r["message"])

    _write_shards(patches, out_dir, cfg.records_per_shard, shard_index, num_shards, report)
    manifest = pd.DataFrame([{k: v for k, v in p.items() if k != "png"} for p in patches], columns=MANIFEST_COLUMNS)
    manifest.to_parquet(out_dir / "manifest.parquet", index=False)
    rejects.to_parquet(out_dir / "rejects.parquet", index=False)
    write_previews(patches, out_dir)
    report.patches_per_class = {c: int((manifest["label"] == c).sum()) for c in CLASS_NAMES}
    report.patches_per_split = manifest["split"].value_counts().to_dict()
    report.patch_sources = manifest["patch_source"].value_counts().to_dict()
    report.mask_status = manifest.loc[manifest["mask_status"] != "", "mask_status"].value_counts().to_dict()
    report.seconds = round(time.time() - start, 2)
    write_report(out_dir, "extract_patches", asdict(report))
    log.info("shard %d: %d patches %s from %d images in %.1fs (%d workers, peak %.0f MB per worker)",
             shard_index, len(patches), report.patches_per_class, report.images, report.seconds, workers,
             report.peak_worker_rss_mb)
    return report


def _write_shards(patches: list[dict], out_dir: Path, per_file: int, shard_index: int, num_shards: int,
                  report: ExtractReport) -> None:
    patches.sort(key=lambda p: p["patch_id"])  # deterministic order whatever the pool did
    n_files = max(1, -(-len(patches) // per_file))
    for f in range(n_files):
        name = f"patches-{shard_index:05d}-of-{num_shards:05d}-{f:03d}.tfrecord"
        chunk = patches[f * per_file : (f + 1) * per_file]
        for i, p in enumerate(chunk):
            p["file"], p["record_index"] = name, i
        write_records(out_dir / name, (serialize_patch(p["png"], p["label_index"], p) for p in chunk))
        report.files.append(name)


def write_previews(patches: list[dict], out_dir: Path, per_class: int = 16) -> list[Path]:
    """A 4x4 grid PNG of the first patches of each class, plus an HTML page showing all grids."""
    import base64

    from mammo.components.imaging import decode_png

    paths, html = [], ["<html><body><h2>Patch previews</h2>"]
    for name in CLASS_NAMES:
        imgs = [decode_png(p["png"]) for p in patches if p["label"] == name][:per_class]
        if not imgs:
            continue
        s = imgs[0].shape[0]
        grid = np.zeros((4 * s, 4 * s), dtype=np.uint8)
        for k, img in enumerate(imgs):
            grid[(k // 4) * s : (k // 4 + 1) * s, (k % 4) * s : (k % 4 + 1) * s] = img
        path = out_dir / f"preview_{name}.png"
        png = encode_png(grid)
        path.write_bytes(png)
        paths.append(path)
        html.append(f"<h3>{name} ({len(imgs)} shown)</h3><img width='{min(4 * s, 512)}' "
                    f"src='data:image/png;base64,{base64.b64encode(png).decode()}'/>")
    (out_dir / "preview.html").write_text("\n".join(html + ["</body></html>"]))
    return paths
