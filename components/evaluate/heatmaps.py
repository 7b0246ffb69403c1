"""Whole-image heatmaps of test cases for the evaluation report, with the ROI outline and a simple
localisation figure: does the top region the model flags hit the lesion's ROI mask?

A few test images per class (``evaluate.heatmap_images_per_class``, seeded choice among the test
split's cases) are scanned by :func:`mammo.components.explain.heatmap.sliding_window_maps` with the
settings ``mammo predict --heatmap`` uses (windows of ``patches.normal_crop_mm`` at the image's
pixel spacing, ``deploy.heatmap_stride``, ``deploy.heatmap_batch``, the breast mask). The figure
shows the malignancy map (malignant mass + malignant calcification) blended over the image, the
ROI outline in green and the top region's box in yellow. For an abnormal case the top region
*hits* when its box contains any ROI pixel; normal images have no ROI and are not counted.

Full images come from ingest's ``cases`` table (``image_uri``, ``roi_mask_uri``,
``pixel_spacing_mm``), read with the documented 8-bit mapping of ``mammo predict``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pandas as pd

from mammo.components.config import CLASS_NAMES, Config

log = logging.getLogger(__name__)

#: width of a heatmap figure in the report (pixels); the full-size maps are not stored
FIGURE_WIDTH = 360


def pick_cases(cases: pd.DataFrame, test_case_ids: set[str], per_class: int, seed: int) -> pd.DataFrame:
    """Up to ``per_class`` test cases per class that have a full image (seeded, in class order)."""
    rng = np.random.default_rng(seed)
    pool = cases[cases["case_id"].astype(str).isin(test_case_ids) & cases["image_uri"].notna()
                 & (cases["image_uri"].astype(str) != "")]
    picked = []
    for name in CLASS_NAMES:
        rows = pool[pool["label"] == name].sort_values("case_id")
        if len(rows):
            picked.append(rows.iloc[sorted(rng.choice(len(rows), size=min(per_class, len(rows)), replace=False))])
    return pd.concat(picked, ignore_index=True) if picked else pool.iloc[:0]


def top_region_hits(box_px: tuple[int, int, int, int], roi: np.ndarray) -> bool:
    """Whether a box ``(y0, x0, y1, x1)`` contains any pixel of the ROI mask."""
    y0, x0, y1, x1 = (max(0, int(v)) for v in box_px)
    return bool(roi[y0:y1, x0:x1].any())


def _read_mask(uri: Any, shape: tuple[int, int], max_pixels: int) -> np.ndarray | None:
    from mammo.components.deploy.predict import load_image_info
    from mammo.components.explain.overlay import resize_map

    if uri is None or (isinstance(uri, float) and np.isnan(uri)) or str(uri) == "":
        return None
    mask, _ = load_image_info(str(uri), max_pixels)
    mask = mask > 0
    return mask if mask.shape == shape else resize_map(mask.astype(np.float32), shape) >= 0.5


def _figure(image: np.ndarray, malignant: np.ndarray, roi: np.ndarray | None, box: tuple | None) -> bytes:
    from PIL import Image

    from mammo.components.explain import overlay

    rgb = overlay.blend(image, malignant, alpha=0.45, threshold=0.05)
    if roi is not None:
        rgb = overlay.draw_outline(rgb, roi, width=max(2, image.shape[1] // 200))
    if box is not None:
        rgb = overlay.draw_boxes(rgb, [box], width=max(2, image.shape[1] // 250))
    scale = FIGURE_WIDTH / rgb.shape[1]
    if scale < 1:
        rgb = np.asarray(Image.fromarray(rgb).resize((FIGURE_WIDTH, max(1, round(rgb.shape[0] * scale))),
                                                     Image.Resampling.LANCZOS))
    return overlay.to_png_bytes(rgb)


def heatmap_gallery(predict_fn: Callable[[np.ndarray], np.ndarray], input_size: int, cases: pd.DataFrame,
                    test_case_ids: set[str], cfg: Config) -> tuple[dict, list[dict]]:
    """(summary for ``metrics.json``, figures for the report) of the chosen test cases.

    ``predict_fn`` maps uint8 windows ``[n, s, s]`` to probabilities. A case whose image cannot be
    read is listed with its error; it never fails the evaluation.
    """
    from mammo.components.deploy.predict import load_image_info
    from mammo.components.explain import heatmap

    d, p = cfg.deploy, cfg.patches
    default_spacing = p.spacing_defaults().get("all")
    chosen = pick_cases(cases, test_case_ids, cfg.evaluate.heatmap_images_per_class, cfg.seed)
    figures, rows, errors = [], [], []
    for case in chosen.itertuples(index=False):
        try:
            image, info = load_image_info(str(case.image_uri), p.max_pixels)
            spacing = getattr(case, "pixel_spacing_mm", None)
            spacing = float(spacing) if spacing is not None and np.isfinite(spacing) and spacing > 0 else (
                getattr(info, "pixel_spacing_mm", None) or default_spacing)
            result = heatmap.sliding_window_maps(predict_fn, image, float(spacing), float(p.normal_crop_mm),
                                                 d.heatmap_stride, d.heatmap_batch,
                                                 min_breast_fraction=d.heatmap_min_breast_fraction,
                                                 input_size=input_size)
            roi = _read_mask(getattr(case, "roi_mask_uri", None), image.shape, p.max_pixels) if case.label != "normal" else None
            regions = heatmap.top_regions(result, k=1)
            box = regions[0].box_px if regions else None
            hit = top_region_hits(box, roi) if (roi is not None and box is not None) else None
            figures.append({"case_id": str(case.case_id), "label": case.label, "hit": hit,
                            "png": _figure(image, heatmap.derived_maps(result)[heatmap.MALIGNANT], roi, box)})
            rows.append({"case_id": str(case.case_id), "label": case.label, "hit": hit, "n_windows": result.n_windows,
                         "pixel_spacing_mm": float(spacing), "top_region": regions[0].to_dict() if regions else None})
        except Exception as exc:  # noqa: BLE001  (a report figure never fails the evaluation)
            errors.append({"case_id": str(case.case_id), "error": f"{type(exc).__name__}: {exc}"})
            log.warning("heatmap of %s: %s", case.case_id, exc)
    localisation = {}
    for name in CLASS_NAMES:
        hits = [r["hit"] for r in rows if r["label"] == name and r["hit"] is not None]
        if hits:
            localisation[name] = {"n": len(hits), "hits": int(sum(hits)), "rate": sum(hits) / len(hits)}
    note = (f"windows of {p.normal_crop_mm:g} mm, stride {d.heatmap_stride:g}; colour = malignancy (malignant mass + "
            "malignant calcification); green = ROI outline; yellow = the top region")
    summary = {"available": bool(rows), "images": rows, "errors": errors, "localisation": localisation, "note": note}
    return summary, figures
