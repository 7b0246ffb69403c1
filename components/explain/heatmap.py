"""Sliding-window probability maps of the patch classifier over whole mammograms.

The classifier was trained on patches that show a fixed physical field of view, so a whole
mammogram is scanned with square windows of ``patch_mm`` millimetres (``patch_mm /
pixel_spacing_mm`` pixels), moved by ``stride`` (a share of the window side), over the breast only:
a window is scored when at least ``min_breast_fraction`` of it lies in the breast mask of
:func:`mammo.components.extract_patches.geometry.breast_mask` (the one extraction uses for normal
patches). Each window is resized to the model's input with the training resampler
(:func:`mammo.components.imaging.resize_uint8`) and sent in batches of ``batch`` to ``predict_fn``
(a local SavedModel or TF Serving over REST / gRPC: anything that maps uint8 ``[n, s, s]`` to
probabilities ``[n, classes]``).

Memory stays bounded: windows are cut and resized one batch at a time; what is kept is one row of
probabilities per window and the maps on a grid of ``stride``-pixel cells (a 5000x3000 image with
600-pixel windows and stride 0.5: 17x10 cells), each cell the mean over the windows covering it.
Cells no window covers (background) are NaN.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mammo.components.config import CLASS_NAMES

#: ``predict_fn(windows uint8 [n, s, s]) -> probabilities [n, classes]``
PredictFn = Callable[[np.ndarray], np.ndarray]

#: derived maps: malignancy = the sum of the malignant classes; abnormality = 1 - normal
MALIGNANT = "malignant"
ABNORMAL = "abnormal"


@dataclass
class Region:
    """One flagged window: class, probability and its box in pixels and millimetres."""

    class_name: str
    probability: float
    box_px: tuple[int, int, int, int]  # y0, x0, y1, x1 (end exclusive)
    box_mm: tuple[float, float, float, float]
    probabilities: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"class_name": self.class_name, "probability": self.probability,
                "box_px": {"y0": self.box_px[0], "x0": self.box_px[1], "y1": self.box_px[2], "x1": self.box_px[3]},
                "box_mm": {"y0": self.box_mm[0], "x0": self.box_mm[1], "y1": self.box_mm[2], "x1": self.box_mm[3]},
                "probabilities": self.probabilities}


@dataclass
class HeatmapResult:
    """The windows' answers and the per-class maps of one image."""

    class_names: list[str]
    #: float32 ``[n_windows, classes]``
    probabilities: np.ndarray
    #: int64 ``[n_windows, 4]``: y0, x0, y1, x1 in image pixels (end exclusive; may reach past the
    #: image border by less than a window, where the window was zero-padded)
    boxes: np.ndarray
    #: float32 ``[classes, rows, cols]`` on the cell grid; NaN where no window was scored
    maps: np.ndarray
    cell_px: int
    window_px: int
    stride_px: int
    image_shape: tuple[int, int]
    pixel_spacing_mm: float
    patch_mm: float
    seconds: float = 0.0

    @property
    def n_windows(self) -> int:
        return int(self.probabilities.shape[0])

    def summary(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape), "pixel_spacing_mm": self.pixel_spacing_mm,
                "patch_mm": self.patch_mm, "window_px": self.window_px, "stride_px": self.stride_px,
                "cell_px": self.cell_px, "n_windows": self.n_windows, "class_names": list(self.class_names),
                "map_shape": list(self.maps.shape[1:]), "seconds": round(self.seconds, 3)}


def window_geometry(pixel_spacing_mm: float, patch_mm: float, stride: float) -> tuple[int, int]:
    """``(window_px, stride_px)`` for a physical window side and a stride given as a share of it."""
    if not (pixel_spacing_mm > 0 and math.isfinite(pixel_spacing_mm)):
        raise ValueError(f"pixel spacing must be a positive number of mm, got {pixel_spacing_mm}")
    if not (patch_mm > 0 and math.isfinite(patch_mm)):
        raise ValueError(f"patch size must be a positive number of mm, got {patch_mm}")
    if not 0 < stride <= 1:
        raise ValueError(f"stride is a share of the window side in (0, 1], got {stride}")
    from mammo.components.extract_patches.geometry import mm_to_px

    window = max(8, mm_to_px(patch_mm, pixel_spacing_mm))
    return window, max(1, int(round(window * stride)))


def _starts(length: int, window: int, step: int) -> list[int]:
    """Window starts along one axis: every ``step``, plus one flush with the far edge."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_grid(shape: tuple[int, int], window_px: int, stride_px: int, mask: np.ndarray | None,
                min_breast_fraction: float) -> np.ndarray:
    """Top-left corners ``[n, 2]`` of the windows to score (those with enough breast in them)."""
    h, w = shape
    corners = [(y, x) for y in _starts(h, window_px, stride_px) for x in _starts(w, window_px, stride_px)]
    if mask is not None:
        need = min_breast_fraction * window_px * window_px
        corners = [(y, x) for y, x in corners
                   if np.count_nonzero(mask[y : y + window_px, x : x + window_px]) >= max(need, 1)]
    return np.asarray(corners, dtype=np.int64).reshape(-1, 2)


def _window_batches(image: np.ndarray, corners: np.ndarray, window_px: int, input_size: int | None,
                    batch: int) -> Iterator[np.ndarray]:
    """uint8 ``[n, s, s]`` batches of windows, cut (zero-padded at the border) and resized lazily."""
    from mammo.components.extract_patches.geometry import crop_padded
    from mammo.components.imaging import resize_uint8

    for start in range(0, len(corners), batch):
        chunk = corners[start : start + batch]
        windows = [crop_padded(image, int(y), int(x), window_px) for y, x in chunk]
        if input_size:
            windows = [resize_uint8(win, int(input_size)) for win in windows]
        yield np.stack(windows)


def sliding_window_maps(
    predict_fn: PredictFn,
    image_uint8: np.ndarray,
    pixel_spacing_mm: float,
    patch_mm: float,
    stride: float = 0.5,
    batch: int = 32,
    breast_mask: np.ndarray | None = None,
    *,
    use_breast_mask: bool = True,
    min_breast_fraction: float = 0.5,
    input_size: int | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    progress: bool = False,
    description: str = "windows",
) -> HeatmapResult:
    """Score the windows of a whole image and build the per-class maps (see the module docstring).

    Args:
        predict_fn: uint8 ``[n, s, s]`` -> probabilities ``[n, len(class_names)]``.
        image_uint8: the mammogram, 8-bit ``[H, W]`` (the training's mapping already applied).
        pixel_spacing_mm: the image's pixel side in mm.
        patch_mm: the physical side of the model's patches in mm.
        stride: window step as a share of the window side (0.5: windows overlap by half).
        batch: windows per ``predict_fn`` call.
        breast_mask: a boolean ``[H, W]`` mask; None computes extraction's breast mask.
        use_breast_mask: False scores every window (e.g. an image that is all breast).
        min_breast_fraction: share of a window that must lie in the breast.
        input_size: resize windows to this side before ``predict_fn`` (None: send as cut).
        progress: show a tqdm progress bar.
    """
    from tqdm import tqdm

    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected an 8-bit grayscale image [H, W], got {image.dtype} {image.shape}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if not 0.0 <= min_breast_fraction <= 1.0:
        raise ValueError(f"min_breast_fraction must be in [0, 1], got {min_breast_fraction}")
    started = time.perf_counter()
    window_px, stride_px = window_geometry(pixel_spacing_mm, patch_mm, stride)
    mask = None
    if use_breast_mask:
        if breast_mask is None:
            from mammo.components.extract_patches.geometry import breast_mask as compute_breast_mask

            mask = compute_breast_mask(image)
        else:
            mask = np.asarray(breast_mask, dtype=bool)
            if mask.shape != image.shape:
                raise ValueError(f"breast mask shape {mask.shape} differs from the image's {image.shape}")
    corners = window_grid(image.shape, window_px, stride_px, mask, min_breast_fraction)
    del mask

    n_classes = len(class_names)
    cell = stride_px
    rows, cols = math.ceil(image.shape[0] / cell), math.ceil(image.shape[1] / cell)
    total = np.zeros((n_classes, rows, cols), dtype=np.float64)
    count = np.zeros((rows, cols), dtype=np.int32)
    probabilities = np.zeros((len(corners), n_classes), dtype=np.float32)
    done = 0
    with tqdm(total=len(corners), unit="win", desc=description, disable=not progress, leave=False) as bar:
        for windows in _window_batches(image, corners, window_px, input_size, batch):
            probs = np.asarray(predict_fn(windows), dtype=np.float32)
            if probs.shape != (len(windows), n_classes):
                raise RuntimeError(f"the model answered shape {probs.shape} for {len(windows)} windows "
                                   f"and {n_classes} classes")
            for (y, x), p in zip(corners[done : done + len(windows)], probs):
                r0, c0 = y // cell, x // cell
                r1 = min(rows, math.ceil(min(y + window_px, image.shape[0]) / cell))
                c1 = min(cols, math.ceil(min(x + window_px, image.shape[1]) / cell))
                total[:, r0:r1, c0:c1] += p[:, None, None]
                count[r0:r1, c0:c1] += 1
            probabilities[done : done + len(windows)] = probs
            done += len(windows)
            bar.update(len(windows))
    with np.errstate(invalid="ignore", divide="ignore"):
        maps = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
    boxes = np.concatenate([corners, corners + window_px], axis=1) if len(corners) else np.zeros((0, 4), np.int64)
    return HeatmapResult(class_names=list(class_names), probabilities=probabilities, boxes=boxes, maps=maps,
                         cell_px=cell, window_px=window_px, stride_px=stride_px,
                         image_shape=(int(image.shape[0]), int(image.shape[1])),
                         pixel_spacing_mm=float(pixel_spacing_mm), patch_mm=float(patch_mm),
                         seconds=time.perf_counter() - started)


def _derived(values: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-class slices of ``values`` (class axis first) plus ``malignant`` and ``abnormal``."""
    out = {name: values[i] for i, name in enumerate(class_names)}
    malignant = [i for i, name in enumerate(class_names) if name.endswith("_malignant")]
    if malignant:
        out[MALIGNANT] = values[malignant].sum(axis=0)
    if "normal" in class_names:
        out[ABNORMAL] = 1.0 - values[list(class_names).index("normal")]
    return out


def derived_maps(result: HeatmapResult) -> dict[str, np.ndarray]:
    """The maps by name: each class, ``malignant`` (malignant mass + malignant calcification) and
    ``abnormal`` (1 - normal)."""
    return _derived(result.maps, result.class_names)


def top_regions(result: HeatmapResult, k: int = 5, classes: Sequence[str] | None = None,
                max_overlap: float = 0.3, min_probability: float = 0.0) -> list[Region]:
    """The ``k`` highest-scoring windows for the abnormal classes and ``malignant``, at distinct places.

    Candidates are (window, class) pairs over ``classes`` (default: every class but ``normal``,
    plus ``malignant``), taken in decreasing probability; one whose window overlaps an already
    chosen one by more than ``max_overlap`` (intersection over union) is skipped.
    """
    if result.n_windows == 0 or k <= 0:
        return []
    scores = _derived(result.probabilities.T, result.class_names)
    names = list(classes) if classes is not None else [n for n in scores if n not in ("normal", ABNORMAL)]
    unknown = [n for n in names if n not in scores]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the maps have {sorted(scores)}")
    candidates = sorted(((float(scores[n][i]), i, n) for n in names for i in range(result.n_windows)), reverse=True)
    chosen: list[Region] = []
    taken: list[np.ndarray] = []
    s = result.pixel_spacing_mm
    for prob, i, name in candidates:
        if prob < min_probability or len(chosen) >= k:
            break
        box = result.boxes[i]
        if any(_iou(box, other) > max_overlap for other in taken):
            continue
        taken.append(box)
        y0, x0, y1, x1 = (int(v) for v in box)
        y1, x1 = min(y1, result.image_shape[0]), min(x1, result.image_shape[1])
        chosen.append(Region(class_name=name, probability=round(prob, 6), box_px=(y0, x0, y1, x1),
                             box_mm=tuple(round(v * s, 2) for v in (y0, x0, y1, x1)),
                             probabilities={c: round(float(p), 6) for c, p in zip(result.class_names, result.probabilities[i])}))
    return chosen


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    dy = min(a[2], b[2]) - max(a[0], b[0])
    dx = min(a[3], b[3]) - max(a[1], b[1])
    if dy <= 0 or dx <= 0:
        return 0.0
    inter = float(dy * dx)
    area = lambda r: float((r[2] - r[0]) * (r[3] - r[1]))  # noqa: E731
    return inter / (area(a) + area(b) - inter)
