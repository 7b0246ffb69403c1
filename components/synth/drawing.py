"""Drawing synthetic mammograms: breast anatomy and texture, lesions, their placement and ROI masks.

Lesions (learnable at a 64 px patch): benign masses are smooth round/oval blobs, malignant masses
irregular blobs with spicules; benign calcifications are a few coarse, sparse specks, malignant
ones many fine specks in a dense cluster (specks near 60000, far above the 15000-35000 tissue).
Images are drawn in LEFT orientation (chest wall at column 0) and mirrored for RIGHT breasts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np


class Placed(Protocol):
    """An abnormality to draw: its lesion and its depth (share of the breast's depth), shared by both views."""

    lesion: Lesion
    depth: float


@dataclass
class Lesion:
    """Shape of one abnormality in lesion coordinates (pixels, LEFT-oriented), shared by CC and MLO."""

    cls: str
    radius: float  # mass radius / calc cluster radius
    # mass
    aspect: float = 1.0
    harmonics: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # k, amplitude, phase
    spikes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # angle, length, width, weight
    amplitude: float = 0.0
    edge: float = 0.06
    # calc: speck offsets (dy, dx), radii and peak values
    specks: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    @property
    def kind(self) -> str:
        return self.cls.split("_")[0]

    def scaled(self, factor: float) -> Lesion:
        """The same lesion drawn smaller (lengths scaled; speck sizes and intensities kept)."""
        spikes, specks = self.spikes.copy(), self.specks.copy()
        spikes[:, 1] *= factor
        specks[:, :2] *= factor
        return replace(self, radius=self.radius * factor, spikes=spikes, specks=specks)

    def extent(self) -> float:
        """Radius of a disc around the centre that holds every drawn pixel (spicules included)."""
        if self.kind == "calc":
            return self.radius + 2.0
        body = self.radius * (self.aspect if not len(self.harmonics) else 1.0 + self.harmonics[:, 1].sum())
        tips = float(self.spikes[:, 1].max()) if len(self.spikes) else 0.0
        return max(body, tips) + 3.0


def plan_lesion(rng: np.random.Generator, cls: str, width: int, shape_name: str = "") -> Lesion:
    scale = width / 320.0  # speck and spicule widths are tuned for a 320 px wide image
    if cls.startswith("mass"):
        radius = width * rng.uniform(0.04, 0.08)
        if cls == "mass_benign":
            aspect = 1.0 + (rng.uniform(0.0, 0.08) if shape_name == "ROUND" else rng.uniform(0.2, 0.45))
            return Lesion(cls, radius, aspect=aspect, amplitude=rng.uniform(9000, 13000), edge=0.05)
        ks = np.arange(2, 8, dtype=float)
        harmonics = np.stack(
            [ks, rng.uniform(0.07, 0.14, ks.size) / np.sqrt(ks - 1), rng.uniform(0, 2 * np.pi, ks.size)], axis=1
        )
        n_spikes = int(rng.integers(8, 15))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n_spikes))
        spikes = np.stack(
            [
                angles,
                radius * rng.uniform(1.8, 2.5, n_spikes),
                np.maximum(0.6, scale * rng.uniform(0.8, 1.4, n_spikes)),
                rng.uniform(0.45, 0.75, n_spikes),
            ],
            axis=1,
        )
        return Lesion(cls, radius, harmonics=harmonics, spikes=spikes, amplitude=rng.uniform(9000, 13000), edge=0.12)
    radius = width * rng.uniform(0.045, 0.075)
    if cls == "calc_benign":  # few coarse specks, spread over the whole cluster disc (sparse)
        n, r_lo, r_hi, spread = int(rng.integers(4, 9)), 1.6, 2.6, None
    else:  # many fine specks, concentrated (dense)
        n, r_lo, r_hi, spread = int(rng.integers(22, 38)), 0.7, 1.0, 0.42
    radii = np.maximum(0.45, scale * rng.uniform(r_lo, r_hi, n))
    limit = np.maximum(radius * 0.92 - radii - 0.5, 0.5)  # every speck stays inside the mask disc
    if spread is None:
        rho = np.sqrt(rng.uniform(0.05, 1.0, n)) * limit
    else:
        rho = np.minimum(np.abs(rng.normal(0.0, spread, n)) * radius, limit)
    theta = rng.uniform(0, 2 * np.pi, n)
    specks = np.stack([rho * np.sin(theta), rho * np.cos(theta), radii, rng.uniform(55000, 62000, n)], axis=1)
    return Lesion(cls, radius, specks=specks)


@functools.lru_cache(maxsize=64)
def _smooth_basis(n_out: int, n_knots: int) -> np.ndarray:
    """(n_out, n_knots) Gaussian interpolation weights: a smooth field is B_r @ G @ B_c.T."""
    pos = np.linspace(0.0, 1.0, n_out)[:, None]
    knots = np.linspace(-0.1, 1.1, n_knots)[None, :]
    w = np.exp(-0.5 * ((pos - knots) / (1.2 / (n_knots - 1))) ** 2)
    return np.ascontiguousarray(w / w.sum(axis=1, keepdims=True), dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _basis_gain(n_out: int, n_knots: int) -> float:
    """Root-mean-square gain of a basis (the field's std for unit-variance knots)."""
    b = _smooth_basis(n_out, n_knots).astype(np.float64)
    return float(np.sqrt(np.mean(np.sum(b * b, axis=1))))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], knots: tuple[int, int]) -> np.ndarray:
    """Zero-mean, roughly unit-variance low-frequency noise.

    Computed with ``einsum`` rather than ``@``: the second product is tiny, and a threaded BLAS
    call on a busy 2-core machine was 50x slower than the plain loop."""
    grid = rng.standard_normal(knots).astype(np.float32)
    rows = np.einsum("ij,jk->ik", _smooth_basis(shape[0], knots[0]), grid)
    f = np.einsum("ik,lk->il", rows, _smooth_basis(shape[1], knots[1]))
    f *= np.float32(1.0 / (_basis_gain(shape[0], knots[0]) * _basis_gain(shape[1], knots[1])))
    return f


class NoiseBank:
    """One large standard-normal field per run; each image takes a randomly placed, randomly flipped
    window of it. Much cheaper than fresh noise per image, and just as deterministic."""

    MARGIN = 96

    def __init__(self, seed: int, shape: tuple[int, int]):
        self.shape = shape
        bank_shape = (shape[0] + self.MARGIN, shape[1] + self.MARGIN)
        self.field = np.random.default_rng([seed, 0]).standard_normal(bank_shape, dtype=np.float32)

    def take(self, rng: np.random.Generator) -> np.ndarray:
        oy, ox = (int(v) for v in rng.integers(0, self.MARGIN + 1, size=2))
        win = self.field[oy:oy + self.shape[0], ox:ox + self.shape[1]]
        flip = int(rng.integers(0, 4))
        return win[:: -1 if flip & 1 else 1, :: -1 if flip & 2 else 1]


@dataclass
class _Anatomy:
    """Breast outline in LEFT orientation (chest wall at column 0)."""

    cy: float
    a: float  # horizontal semi-axis (depth from the chest wall)
    b: float  # vertical semi-axis
    pect_x: float = 0.0  # MLO pectoral muscle: triangle (0,0)-(pect_x,0)-(0,pect_y); 0 = none
    pect_y: float = 0.0

    def q(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Normalised elliptic radius (< 1 inside the breast)."""
        return np.sqrt((x / self.a) ** 2 + ((y - self.cy) / self.b) ** 2)

    def pect_distance(self, y: np.ndarray | float, x: np.ndarray | float) -> np.ndarray | float:
        """Signed distance to the pectoral line (positive = outside the muscle)."""
        if not self.pect_x:
            return np.full_like(np.asarray(y, dtype=float), 1e9)
        return (x / self.pect_x + y / self.pect_y - 1.0) / math.hypot(1 / self.pect_x, 1 / self.pect_y)


def _plan_anatomy(rng: np.random.Generator, shape: tuple[int, int], view: str) -> _Anatomy:
    h, w = shape
    if view == "CC":
        return _Anatomy(cy=h * rng.uniform(0.47, 0.53), a=w * rng.uniform(0.78, 0.92), b=h * rng.uniform(0.38, 0.44))
    return _Anatomy(
        cy=h * rng.uniform(0.40, 0.46),
        a=w * rng.uniform(0.80, 0.94),
        b=h * rng.uniform(0.48, 0.54),
        pect_x=w * rng.uniform(0.22, 0.36),
        pect_y=h * rng.uniform(0.30, 0.45),
    )


def _draw_breast(
    rng: np.random.Generator, noise: NoiseBank, shape: tuple[int, int], anat: _Anatomy, density: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 image, float32 tissue weight) in LEFT orientation: background ~0-300, tissue
    15000-35000 with a smooth low-frequency texture (brighter for denser breasts)."""
    h, w = shape
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    q2 = (x / np.float32(anat.a)) ** 2 + ((y - np.float32(anat.cy)) / np.float32(anat.b)) ** 2
    level = np.float32(17000.0 + 2200.0 * (density - 1) + rng.uniform(-1500, 1500))
    tissue = _smooth_field(rng, shape, (7, 5))
    tissue *= np.float32(3500.0)
    tissue += np.float32(1500.0) * _smooth_field(rng, shape, (22, 14))
    tissue += level
    tissue *= np.float32(0.72) + np.float32(0.28) * np.clip(1.0 - q2 * q2, 0.0, 1.0)  # darker near the skin
    if anat.pect_x:  # MLO: the pectoral muscle, a brighter, flatter triangle at the chest wall's top
        inside = np.clip(-anat.pect_distance(y, x) / 3.0, 0.0, 1.0).astype(np.float32)
        tissue += inside * (level * np.float32(0.35) + np.float32(2000.0) - tissue * np.float32(0.15))
    np.clip(tissue, 15000.0, 35000.0, out=tissue)
    alpha = np.clip((1.0 - np.sqrt(q2)) * np.float32(min(anat.a, anat.b) / 2.0), 0.0, 1.0)  # ~2 px skin line
    background = np.clip(noise.take(rng) * np.float32(75.0) + np.float32(150.0), 0.0, 300.0)
    tissue -= background
    tissue *= alpha
    tissue += background
    return tissue, alpha


def _draw_lesion(img: np.ndarray, mask: np.ndarray, les: Lesion, cy: float, cx: float, rot: float) -> None:
    """Draw one lesion into ``img`` (float32) and its ROI into ``mask`` (uint8), in place."""
    h, w = img.shape
    r = int(math.ceil(les.extent())) + 1
    y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 1)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    win = img[y0:y1, x0:x1]
    if les.kind == "mass":
        rho = np.sqrt(dy**2 + dx**2)
        theta = np.arctan2(dy, dx)
        if len(les.harmonics):  # irregular outline: radius modulated by a few harmonics
            k, amp, phase = les.harmonics[:, 0], les.harmonics[:, 1], les.harmonics[:, 2]
            boundary = les.radius * (1.0 + np.tensordot(np.cos(k[None, None, :] * (theta[..., None] - rot) + phase),
                                                        amp, axes=([2], [0])))
            qn = rho / boundary
        else:  # ellipse, rotated
            c, s = math.cos(rot), math.sin(rot)
            u, v = dx * c + dy * s, -dx * s + dy * c
            qn = np.sqrt((u / (les.radius * les.aspect)) ** 2 + (v / les.radius) ** 2)
        body = 1.0 / (1.0 + np.exp((qn - 1.0) / les.edge))
        body *= 0.85 + 0.15 * np.clip(1.0 - qn**2, 0.0, 1.0)  # slightly domed
        add = les.amplitude * body
        for angle, length, width, weight in les.spikes:
            a = angle + rot
            along = dx * math.cos(a) + dy * math.sin(a)
            across = -dx * math.sin(a) + dy * math.cos(a)
            taper = np.clip(1.0 - along / length, 0.0, 1.0) * (along > 0)
            add = np.maximum(add, les.amplitude * weight * taper * np.exp(-0.5 * (across / width) ** 2))
        win += add
        mask[y0:y1, x0:x1][qn <= 1.0] = 255
    else:
        c, s = math.cos(rot), math.sin(rot)
        sy = les.specks[:, 0] * c + les.specks[:, 1] * s
        sx = -les.specks[:, 0] * s + les.specks[:, 1] * c
        d = np.sqrt((dy[None] - sy[:, None, None]) ** 2 + (dx[None] - sx[:, None, None]) ** 2)
        cover = np.clip(les.specks[:, 2, None, None] + 0.5 - d, 0.0, 1.0)  # anti-aliased discs
        k = cover.argmax(axis=0)
        p = np.take_along_axis(cover, k[None], axis=0)[0]
        peak = les.specks[k, 3]
        win += p * (peak - win)
        mask[y0:y1, x0:x1][(dy**2 + dx**2) <= les.radius**2] = 255


def _place(
    rng: np.random.Generator, anat: _Anatomy, shape: tuple[int, int], les: Lesion, depth: float,
    taken: list[tuple[float, float, float]],
) -> tuple[float, float, Lesion]:
    """A centre (LEFT orientation) where the whole lesion lies in the tissue, off the pectoral muscle
    and clear of the image's other lesions; ``depth`` keeps CC and MLO positions consistent. Where
    the lesion does not fit (small images, a second lesion), it is drawn smaller in this view."""
    h, w = shape
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for factor in (1.0, 0.85, 0.7, 0.55, 0.4):
        lesion = les if factor == 1.0 else les.scaled(factor)
        ext = lesion.extent()
        for attempt in range(150):
            t = depth if attempt < 50 else rng.uniform(0.15, 0.8)
            x = t * anat.a * rng.uniform(0.92, 1.08)
            half = anat.b * math.sqrt(max(0.0, 1.0 - (x / anat.a) ** 2))
            y = anat.cy + rng.uniform(-0.85, 0.85) * half
            py, px = y + ext * np.sin(ang), x + ext * np.cos(ang)
            if py.min() < 1 or px.min() < 1 or py.max() > h - 2 or px.max() > w - 2:
                continue
            if anat.q(py, px).max() > 0.9 or np.min(anat.pect_distance(py, px)) < 2.0:
                continue
            if any(math.hypot(y - ty, x - tx) < ext + te + 2 for ty, tx, te in taken):
                continue
            return y, x, lesion
    raise RuntimeError(f"no room for a lesion of extent {les.extent():.1f} px in an image of {shape}; "
                       "use a larger image_shape")


def render(
    rng: np.random.Generator, noise: NoiseBank, shape: tuple[int, int], view: str, side: str, density: int,
    abns: Sequence[Placed],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(uint16 full image, one uint8 ROI mask per abnormality), in the breast's orientation."""
    anat = _plan_anatomy(rng, shape, view)
    img, alpha = _draw_breast(rng, noise, shape, anat, density)
    masks = []
    taken: list[tuple[float, float, float]] = []
    for abn in abns:
        cy, cx, lesion = _place(rng, anat, shape, abn.lesion, abn.depth, taken)
        taken.append((cy, cx, lesion.extent()))
        mask = np.zeros(shape, dtype=np.uint8)
        _draw_lesion(img, mask, lesion, cy, cx, rot=float(rng.uniform(0, 2 * np.pi)))
        masks.append(mask)
    alpha *= np.float32(350.0)
    alpha *= noise.take(rng)
    img += alpha  # pixel noise in the tissue
    np.rint(img, out=img)
    full = np.clip(img, 0, 65535).astype(np.uint16)
    if side == "RIGHT":  # drawn against the left edge; RIGHT breasts sit against the right edge
        full = np.ascontiguousarray(full[:, ::-1])
        masks = [np.ascontiguousarray(m[:, ::-1]) for m in masks]
    return full, masks


def crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box of the ROI plus a margin, always smaller than the image."""
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    m = max(2, round(0.15 * max(y1 - y0, x1 - x0)))
    h, w = mask.shape
    y0, y1, x0, x1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
    if (y1 - y0, x1 - x0) == (h, w):  # never the full size: the mask is told apart by size
        y1 -= 1
    return y0, y1, x0, x1
