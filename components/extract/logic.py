"""Patch extraction: ROI-centred crops of abnormalities, tissue crops of normal CC views.

Abnormal patch: the bounding box of the ROI mask, a square crop centred on it whose side is
``max(bbox h, bbox w) * (1 + context_margin)`` (at least ``min_crop_size``), zero-padded where it
crosses the image border (zero = background after the 8-bit mapping), mapped to 8 bits
(:func:`mammo.components.imaging.to_uint8`) and resampled to ``image_size`` with anti-aliasing.
If the mask is empty the cropped-image DICOM is used instead (``patch_source = "cropped"``).

Normal patch: only CC views (as in the paper). A breast mask is the Otsu threshold of the 8-bit
image; crops of ``normal_crop_size`` are drawn around the tissue's centre of mass (deterministic
per seed and case) and kept only if at least ``min_tissue_fraction`` of the crop is tissue.

Work is split into ``num_shards`` deterministic shards (by full image), so a ``ParallelFor`` can
fan it out; within a shard, images are processed by a process pool. Each case yields patches or
one reject row with a reason, so ``cases in = cases with patches + rejected cases``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mammo.components.config import CLASS_NAMES, PatchConfig
from mammo.components.imaging import encode_png, read_image, resize_uint8, to_uint8
from mammo.components.tfrecords import serialize_patch, write_records

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "patch_id", "case_id", "patient_id", "label", "label_index", "split", "source", "scanner",
    "patch_source", "crop_y0", "crop_x0", "crop_size", "file", "record_index",
]


@dataclass
class ExtractReport:
    shard_index: int = 0
    num_shards: int = 1
    cases_in: int = 0
    cases_with_patches: int = 0
    cases_rejected: int = 0
    patches_per_class: dict[str, int] = field(default_factory=dict)
    patches_per_split: dict[str, int] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- geometry (pure, unit-tested) ----------------------------------------------------------------


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) half-open bounding box of the non-zero mask pixels, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


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
    """Tissue vs background by Otsu's threshold on the 8-bit image."""
    from skimage.filters import threshold_otsu

    if image8.max() == image8.min():
        return np.zeros(image8.shape, dtype=bool)
    return image8 > threshold_otsu(image8)


def _rng_for(case_id: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def normal_crops(tissue: np.ndarray, n: int, side: int, min_fraction: float, rng: np.random.Generator,
                 attempts: int = 200) -> list[tuple[int, int]]:
    """Up to ``n`` top-left corners of ``side``-squares that are at least ``min_fraction`` tissue.

    Candidates are drawn around the tissue's centre of mass (the middle of the breast), spreading
    out as attempts fail; a summed-area table makes each check O(1).
    """
    h, w = tissue.shape
    if side > h or side > w or not tissue.any():
        return []
    sat = np.pad(tissue.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys, xs = np.nonzero(tissue)
    cy, cx = ys.mean(), xs.mean()
    spread = max(ys.std(), xs.std())
    found: list[tuple[int, int]] = []
    for k in range(attempts):
        if len(found) >= n:
            break
        scale = spread * (0.25 + 1.5 * k / attempts)
        y = int(np.clip(rng.normal(cy, scale) - side / 2, 0, h - side))
        x = int(np.clip(rng.normal(cx, scale) - side / 2, 0, w - side))
        inside = sat[y + side, x + side] - sat[y, x + side] - sat[y + side, x] + sat[y, x]
        if inside >= min_fraction * side * side and (y, x) not in found:
            found.append((y, x))
    return found


# -- per image work (runs in worker processes) ---------------------------------------------------


def _patches_for_image(job: tuple[list[dict], dict, int]) -> list[dict]:
    """All patches (or rejects) of the cases sharing one full image. Returns plain dicts."""
    rows, cfg_dict, seed = job
    cfg = PatchConfig(**cfg_dict)
    out: list[dict] = []
    try:
        pixels, info = read_image(rows[0]["image_uri"])
    except Exception as exc:
        return [{"case_id": r["case_id"], "reject": "unreadable_image", "message": f"{type(exc).__name__}: {exc}"}
                for r in rows]
    bits = int(rows[0].get("bits_stored") or info.bits_stored)
    for row in rows:
        try:
            out.extend(_abnormal_patch(row, pixels, bits, info.photometric, cfg) if row["label"] != "normal"
                       else _normal_patches(row, pixels, bits, info.photometric, cfg, seed))
        except Exception as exc:  # one bad case must not lose the others of the image
            out.append({"case_id": row["case_id"], "reject": "extract_failed", "message": f"{type(exc).__name__}: {exc}"})
    return out


def _abnormal_patch(row: dict, pixels: np.ndarray, bits: int, photometric: str, cfg: PatchConfig) -> list[dict]:
    mask, _ = read_image(row["roi_mask_uri"])
    bbox = mask_bbox(mask > 0) if mask.shape == pixels.shape else None
    if bbox is not None:
        y0, x0, side = square_around(bbox, cfg.context_margin, cfg.min_crop_size)
        crop = crop_padded(pixels, y0, x0, side)
        source = "mask"
    elif row.get("cropped_uri"):
        crop, _ = read_image(row["cropped_uri"])
        y0 = x0 = -1
        side = max(crop.shape)
        crop = crop_padded(crop, (crop.shape[0] - side) // 2, (crop.shape[1] - side) // 2, side)
        source = "cropped"
    else:
        return [{"case_id": row["case_id"], "reject": "empty_mask", "message": "ROI mask is empty and no cropped image"}]
    patch = resize_uint8(to_uint8(crop, bits, photometric), cfg.image_size)
    return [_patch_record(row, row["case_id"], patch, source, y0, x0, side)]


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
                      "normal", y, x, side)
        for k, (y, x) in enumerate(corners)
    ]


def _patch_record(row: dict, patch_id: str, patch: np.ndarray, source: str, y0: int, x0: int, side: int) -> dict:
    return {
        "patch_id": patch_id, "case_id": row["case_id"], "patient_id": row["patient_id"], "label": row["label"],
        "label_index": int(row["label_index"]), "split": row["split"], "source": row["source"],
        "scanner": row.get("scanner") or "", "patch_source": source, "crop_y0": y0, "crop_x0": x0,
        "crop_size": side, "png": encode_png(patch),
    }


# -- the step ------------------------------------------------------------------------------------


def shard_of(key: str, num_shards: int) -> int:
    """Stable shard of a full image (all abnormalities of an image go to the same shard)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % num_shards


def extract_patches(cases_path: str | Path, out_dir: str | Path, cfg: PatchConfig, seed: int,
                    shard_index: int = 0, num_shards: int = 1, workers: int = 0,
                    progress: bool = True) -> ExtractReport:
    """Extract the patches of one shard into TFRecord files + ``manifest.parquet`` + previews.

    Re-running a shard with the same inputs and settings writes the same bytes.
    """
    import time

    from tqdm import tqdm

    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = pd.read_parquet(cases_path)
    # normals: CC views only (the paper's normal class); MLO normals are not used
    cases = cases[(cases["label"] != "normal") | (cases["view"] == "CC")]
    cases = cases[[shard_of(u, num_shards) == shard_index for u in cases["image_uri"]]]
    report = ExtractReport(shard_index=shard_index, num_shards=num_shards, cases_in=len(cases))
    records = cases.astype(object).where(cases.notna(), None).to_dict("records")
    by_image: dict[str, list[dict]] = {}
    for r in records:
        by_image.setdefault(r["image_uri"], []).append(r)
    jobs = [(rows, asdict(cfg), seed) for _, rows in sorted(by_image.items())]
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    log.info("shard %d/%d: %d cases on %d images, %d workers", shard_index, num_shards, len(cases), len(jobs), workers)

    results: list[dict] = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for res in tqdm(pool.map(_patches_for_image, jobs, chunksize=4), total=len(jobs),
                            desc="extract", unit="img", disable=not progress):
                results.extend(res)
    else:
        for job in tqdm(jobs, desc="extract", unit="img", disable=not progress):
            results.extend(_patches_for_image(job))

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
    report.seconds = round(time.time() - start, 2)
    (out_dir / "report.json").write_text(json.dumps({"step": "extract", **asdict(report)}, indent=2))
    log.info("shard %d: %d patches %s in %.1fs", shard_index, len(patches), report.patches_per_class, report.seconds)
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
