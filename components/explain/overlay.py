"""Drawing for explanations: colour maps blended over a grayscale mammogram, boxes and outlines.

Everything works on uint8 arrays (grayscale ``[H, W]`` or RGB ``[H, W, 3]``) and returns new arrays;
nothing here depends on TensorFlow. Maps smaller than the image (a heatmap on a coarse grid, a
Grad-CAM map of a convolution layer) are resized to the image with bilinear interpolation.

Colour maps are fixed piecewise-linear tables (no plotting library needed): ``jet`` (blue ->
cyan -> yellow -> red, the usual heatmap) and ``inferno``-like ``hot`` (black -> red -> yellow ->
white). ``blend`` leaves pixels whose value is below ``threshold`` (or NaN: "not computed", e.g.
outside the breast) as the plain grayscale image, so only where the model says something is coloured.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

#: control points (position 0..1, R, G, B) of the colour maps
_COLORMAPS: dict[str, list[tuple[float, int, int, int]]] = {
    "jet": [(0.0, 0, 0, 143), (0.125, 0, 0, 255), (0.375, 0, 255, 255), (0.625, 255, 255, 0),
            (0.875, 255, 0, 0), (1.0, 128, 0, 0)],
    "hot": [(0.0, 0, 0, 0), (0.4, 230, 0, 0), (0.8, 255, 230, 0), (1.0, 255, 255, 255)],
}


def colormap_lut(name: str = "jet") -> np.ndarray:
    """The 256-entry RGB table of a colour map (uint8 ``[256, 3]``)."""
    try:
        points = _COLORMAPS[name]
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}; choose one of {sorted(_COLORMAPS)}") from None
    x = np.linspace(0.0, 1.0, 256)
    pos = [p[0] for p in points]
    return np.stack([np.interp(x, pos, [p[c] for p in points]) for c in (1, 2, 3)], axis=1).round().astype(np.uint8)


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float map resized to ``shape`` (bilinear; NaN kept as NaN where it dominates)."""
    from PIL import Image

    values = np.asarray(values, dtype=np.float32)
    if values.shape == tuple(shape):
        return values
    nan = np.isnan(values)
    filled = np.where(nan, 0.0, values).astype(np.float32)
    size = (int(shape[1]), int(shape[0]))
    out = np.asarray(Image.fromarray(filled, mode="F").resize(size, Image.Resampling.BILINEAR))
    if nan.any():
        weight = np.asarray(Image.fromarray((~nan).astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(weight > 0.5, out / np.maximum(weight, 1e-6), np.nan)
    return out.astype(np.float32)


def colorize(values: np.ndarray, colormap: str = "jet", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Float values -> RGB uint8 through a colour map (values clipped to ``[vmin, vmax]``; NaN -> 0)."""
    if vmax <= vmin:
        raise ValueError(f"vmax ({vmax}) must be above vmin ({vmin})")
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=vmin)
    index = np.clip(np.rint((v - vmin) / (vmax - vmin) * 255.0), 0, 255).astype(np.uint8)
    return colormap_lut(colormap)[index]


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grayscale ``[H, W]`` (or ``[H, W, 1]``) or RGB uint8 -> a new RGB uint8 array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.repeat(image[:, :, np.newaxis], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise ValueError(f"expected a grayscale or RGB image, got shape {image.shape}")


def blend(
    gray_uint8: np.ndarray,
    prob_map: np.ndarray,
    alpha: float = 0.5,
    colormap: str = "jet",
    vmin: float = 0.0,
    vmax: float = 1.0,
    threshold: float = 0.0,
) -> np.ndarray:
    """The image with ``prob_map`` (any size, resized to the image) blended over it in colour.

    ``alpha`` is the colour's weight; pixels whose value is NaN or below ``threshold`` stay gray.
    Returns RGB uint8 ``[H, W, 3]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = to_rgb(gray_uint8)
    values = resize_map(prob_map, base.shape[:2])
    colour = colorize(values, colormap, vmin, vmax)
    show = ~np.isnan(values) & (values >= threshold)
    out = base.astype(np.float32)
    out[show] = (1.0 - alpha) * out[show] + alpha * colour[show].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_boxes(
    rgb: np.ndarray,
    boxes: Sequence[Sequence[int]],
    color: tuple[int, int, int] = (255, 255, 0),
    width: int = 3,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Rectangles ``(y0, x0, y1, x1)`` (pixels, end exclusive) drawn on a copy; optional text labels."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(to_rgb(rgb))
    draw = ImageDraw.Draw(img)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        draw.rectangle([int(x0), int(y0), int(x1) - 1, int(y1) - 1], outline=tuple(color), width=int(width))
        if labels is not None and i < len(labels) and labels[i]:
            draw.text((int(x0) + width + 2, int(y0) + width + 2), str(labels[i]), fill=tuple(color))
    return np.asarray(img)


def draw_outline(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0), width: int = 2) -> np.ndarray:
    """The boundary of a boolean ``mask`` (resized to the image if needed) drawn on a copy."""
    from scipy import ndimage

    out = to_rgb(rgb)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != out.shape[:2]:
        mask = resize_map(mask.astype(np.float32), out.shape[:2]) >= 0.5
    inner = ndimage.binary_erosion(mask, iterations=max(1, int(width)), border_value=0)
    out[mask & ~inner] = np.asarray(color, dtype=np.uint8)
    return out


def to_png_bytes(image: np.ndarray) -> bytes:
    """A grayscale or RGB uint8 image as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a grayscale or RGB uint8 image as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_png_bytes(image))
    return path


def _titled(rgb: np.ndarray, title: str, band: int = 18) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + band), (0, 0, 0))
    img.paste(Image.fromarray(rgb), (0, band))
    ImageDraw.Draw(img).text((4, 3), title, fill=(255, 255, 255))
    return np.asarray(img)


def panels(
    gray_uint8: np.ndarray,
    maps: "dict[str, np.ndarray]",
    boxes: Sequence[Sequence[int]] = (),
    labels: Sequence[str] | None = None,
    height: int = 800,
    alpha: float = 0.5,
    colormap: str = "jet",
    vmax: float = 1.0,
) -> np.ndarray:
    """One picture for a whole image: the image (with ``boxes`` in image pixels) and one panel per
    named map blended over it, side by side, each ``height`` pixels high (aspect kept) and titled."""
    from PIL import Image

    gray = np.asarray(gray_uint8, dtype=np.uint8)
    scale = min(1.0, float(height) / gray.shape[0])
    size = (max(1, int(round(gray.shape[1] * scale))), max(1, int(round(gray.shape[0] * scale))))
    small = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR)) if scale < 1 else gray
    scaled = [[int(round(v * scale)) for v in box] for box in boxes]
    first = draw_boxes(small, scaled, width=2, labels=[str(i + 1) for i in range(len(scaled))]) if scaled else to_rgb(small)
    tiles = [_titled(first, "; ".join(labels) if labels else "image")]
    for name, values in maps.items():
        tiles.append(_titled(blend(small, values, alpha=alpha, colormap=colormap, vmax=vmax), name))
    gap = np.zeros((tiles[0].shape[0], 4, 3), dtype=np.uint8)
    row: list[np.ndarray] = []
    for tile in tiles:
        row += [tile, gap]
    return np.concatenate(row[:-1], axis=1)
