"""Patch geometry, pure and unit-tested: lesion boxes, square windows, the breast mask, normal crop corners,
and the millimetre <-> pixel conversion.

Lesion windows: the square side is ``max(box h, box w) * (1 + context_margin)``, at least the minimum
crop. Under the ``paper`` protocol the window is centred on the box and zero-padded where it leaves the
image; under ``unbiased`` it is shifted to stay inside the image (the lesion stays whole in view: the
window covers the box and the box lies in the image), and padding remains only when the side exceeds
the image itself. Padding is measured (:func:`padding_fraction`) and recorded per patch.
"""

from __future__ import annotations

import numpy as np


def mm_to_px(mm: float, spacing_mm: float) -> int:
    """Pixels spanning ``mm`` at ``spacing_mm`` per pixel (at least 1)."""
    return max(1, int(round(float(mm) / float(spacing_mm))))


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
    The largest temporaries are two int32 label images.
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
    out as attempts fail. Each candidate is checked by counting its tissue pixels: for the handful
    of candidates a breast needs this is cheaper than a full-size summed-area table (4 bytes a pixel).
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


def place_window(y0: int, x0: int, side: int, image_shape: tuple[int, int]) -> tuple[int, int]:
    """Shift a square window inside the image along each axis where the image is at least ``side`` long
    (an axis shorter than ``side`` keeps the centred position: padding there is unavoidable)."""
    h, w = image_shape
    if side <= h:
        y0 = min(max(y0, 0), h - side)
    if side <= w:
        x0 = min(max(x0, 0), w - side)
    return y0, x0


def padding_fraction(y0: int, x0: int, side: int, image_shape: tuple[int, int]) -> float:
    """Share of a square window's pixels that lie outside the image (zero padding)."""
    h, w = image_shape
    inside = max(0, min(y0 + side, h) - max(y0, 0)) * max(0, min(x0 + side, w) - max(x0, 0))
    return round(1.0 - inside / float(side * side), 6)


def count_blobs(roi: np.ndarray, bbox: tuple[int, int, int, int], min_share: float = 0.01) -> int:
    """Connected ROI regions inside ``bbox`` (8-connectivity), ignoring specks under ``min_share`` of the
    largest one. Only the box is labelled, so a full-size mask costs no full-size label image."""
    from scipy import ndimage

    y0, x0, y1, x1 = bbox
    labels, n = ndimage.label(roi[y0:y1, x0:x1], structure=np.ones((3, 3), bool))
    if n <= 1:
        return n
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_share * sizes.max()).sum())
