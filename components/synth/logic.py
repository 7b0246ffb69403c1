"""Synth: a small synthetic dataset in the real CBIS-DDSM download layout, with learnable lesions.

What :func:`synthesize` writes under ``out_dir``::

    cbis/mass_case_description_{train,test}_set.csv     the real headers, values and quirks
    cbis/calc_case_description_{train,test}_set.csv
    cbis/CBIS-DDSM/<folder>/<MM-DD-YYYY>-DDSM[-NA]-<study5>/1.000000-full mammogram images-<series5>/1-1.dcm
    cbis/CBIS-DDSM/<folder>_<abn>/<MM-DD-YYYY>-DDSM[-NA]-<study5>/1.000000-ROI mask images-<series5>/1-{1,2}.dcm
    normals/<N_xxxxx>/<N_xxxxx>_<SIDE>_<VIEW>.dcm        DDSM-like normals (three scanners, 16 / 12 bit)
    normals/manifest.csv                                 patient_id,side,view,path,scanner,bits_stored

Quirks of the real CSVs reproduced on purpose (ARCHITECTURE.md section 5, data/README.md):

* mass CSVs say ``breast_density``, calc CSVs ``breast density``; shape/margins vs type/distribution;
* CSV paths name ``<folder>/<StudyUID>/<SeriesUID>/00000N.dcm``, which does not exist on disk: the
  NBIA tree is keyed by the last five digits of the study and series UIDs (some study folders say
  ``-DDSM-NA-``), and files are ``1-1.dcm`` / ``1-2.dcm``;
* cropped image and ROI mask share one series; which of ``1-1`` / ``1-2`` is the crop varies, and
  in about a quarter of the rows the CSV's crop and mask columns are swapped (plus a few mass rows
  that name ``000000.dcm`` twice): only the image size tells them apart (the mask has the full
  image's size, the crop is the lesion's bounding box plus a margin);
* as in the real files, one path per row is quoted and ends in an embedded newline: the ROI mask
  column (the last one) in mass CSVs, the cropped-image column in calc CSVs; rows end in CRLF;
* every abnormality appears twice (CC and MLO view of the same breast, same abnormality id), and
  some images carry two abnormalities (ids 1 and 2 share the full image path);
* ROI masks are 8-bit 0/255 DICOMs, full images and crops 16-bit; DICOM headers carry fake
  patient-identifying values (name, birth date, accession number, ...) for PHI-stripping tests.

Lesions (learnable at a 64 px patch): benign masses are smooth round/oval blobs, malignant masses
irregular blobs with spicules; benign calcifications are a few coarse, sparse specks, malignant
ones many fine specks in a dense cluster (specks near 60000, far above the 15000-35000 tissue).

Determinism: everything is planned with one ``numpy`` generator seeded by ``seed`` (UIDs, dates,
layout), and each image is drawn with its own generator derived from ``(seed, image number)``; no
clock or OS randomness is used, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import logging
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# -- constants -----------------------------------------------------------------------------------

MASS_HEADER = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
]
CALC_HEADER = [
    "patient_id", "breast density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
]
CSV_NAMES = {
    ("mass", "Training"): "mass_case_description_train_set.csv",
    ("mass", "Test"): "mass_case_description_test_set.csv",
    ("calc", "Training"): "calc_case_description_train_set.csv",
    ("calc", "Test"): "calc_case_description_test_set.csv",
}
#: the abnormal classes, named as in ``mammo.components.config.CLASS_NAMES``
CLASSES = ("calc_benign", "calc_malignant", "mass_benign", "mass_malignant")

UID_PREFIX = "1.3.6.1.4.1.9590.100.1.2."  # the CBIS-DDSM UID root
NORMAL_UID_PREFIX = "2.25."  # UUID-derived root for the normals (another "archive")
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture, as in the CBIS-DDSM files
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's root; fixed so the bytes are too
SCANNERS = {"DBA": 16, "HOWTEK": 12, "LUMISYS": 12}

#: share of benign rows that are BENIGN_WITHOUT_CALLBACK, per kind (the real files: ~15% / ~45%)
BWC_SHARE = {"mass": 0.15, "calc": 0.4}
SWAP_SHARE = 0.25  # rows whose crop / mask columns name the other file
MASS_DOUBLE_ZERO_SHARE = 0.05  # mass rows naming 000000.dcm for both crop and mask
NA_STUDY_SHARE = 0.10  # study folders named <date>-DDSM-NA-<study5>
TEST_EVERY = 5  # every 5th breast of a class goes to the Test split (~20%)
DOUBLE_EVERY = 9  # every 9th breast of a kind carries two abnormalities (~10% of images)

_VALUES = {
    "mass_benign": {
        "shape": [("ROUND", 0.4), ("OVAL", 0.6)],
        "margins": [("CIRCUMSCRIBED", 0.75), ("OBSCURED", 0.25)],
    },
    "mass_malignant": {
        "shape": [("IRREGULAR", 0.6), ("IRREGULAR-ARCHITECTURAL_DISTORTION", 0.25), ("LOBULATED-IRREGULAR", 0.15)],
        "margins": [("SPICULATED", 0.6), ("ILL_DEFINED-SPICULATED", 0.25), ("OBSCURED-SPICULATED", 0.15)],
    },
    "calc_benign": {
        "type": [("COARSE", 0.3), ("ROUND_AND_REGULAR-LUCENT_CENTER", 0.25), ("LUCENT_CENTER", 0.2),
                 ("PUNCTATE", 0.15), ("VASCULAR", 0.1)],
        "distribution": [("CLUSTERED", 0.4), ("REGIONAL", 0.2), ("DIFFUSELY_SCATTERED", 0.15), ("NA", 0.25)],
    },
    "calc_malignant": {
        "type": [("PLEOMORPHIC", 0.5), ("FINE_LINEAR_BRANCHING", 0.2), ("AMORPHOUS", 0.15),
                 ("PLEOMORPHIC-FINE_LINEAR_BRANCHING", 0.15)],
        "distribution": [("CLUSTERED", 0.6), ("LINEAR", 0.15), ("SEGMENTAL", 0.15), ("CLUSTERED-LINEAR", 0.1)],
    },
}


@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote (JSON-serialisable through ``dataclasses.asdict``)."""

    out_dir: str
    cbis_dir: str
    normals_dir: str
    #: data rows per CSV file name
    rows_per_csv: dict[str, int]
    #: abnormality rows (one per abnormality per view) per class, train + test
    abnormalities_per_class: dict[str, int]
    normal_images: int
    seconds: float


# -- planning ------------------------------------------------------------------------------------


class _Uids:
    """Unique CBIS-like UIDs (prefix + 36-39 random digits), drawn from the planning generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.seen: set[str] = set()

    def new(self, prefix: str = UID_PREFIX) -> str:
        while True:
            n = int(self.rng.integers(36, 40)) if prefix == UID_PREFIX else 38
            digits = self.rng.integers(0, 10, size=n)
            digits[0] = self.rng.integers(1, 10)  # a UID component has no leading zero
            uid = prefix + "".join(map(str, digits.tolist()))
            if uid not in self.seen and len(uid) <= 64:
                self.seen.add(uid)
                return uid


def _pick(rng: np.random.Generator, table: list[tuple[str, float]]) -> str:
    names, weights = zip(*table)
    p = np.asarray(weights, dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


@dataclass
class _Lesion:
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

    def scaled(self, factor: float) -> _Lesion:
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


def _plan_lesion(rng: np.random.Generator, cls: str, width: int, shape_name: str = "") -> _Lesion:
    scale = width / 320.0  # speck and spicule widths are tuned for a 320 px wide image
    if cls.startswith("mass"):
        radius = width * rng.uniform(0.04, 0.08)
        if cls == "mass_benign":
            aspect = 1.0 + (rng.uniform(0.0, 0.08) if shape_name == "ROUND" else rng.uniform(0.2, 0.45))
            return _Lesion(cls, radius, aspect=aspect, amplitude=rng.uniform(9000, 13000), edge=0.05)
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
        return _Lesion(cls, radius, harmonics=harmonics, spikes=spikes, amplitude=rng.uniform(9000, 13000), edge=0.12)
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
    return _Lesion(cls, radius, specks=specks)


@dataclass
class _Abnormality:
    abn_id: int
    cls: str
    lesion: _Lesion
    depth: float  # distance from the chest wall as a share of the breast's depth, shared by both views
    values: dict[str, str]


@dataclass
class _Breast:
    number: int
    patient_id: str
    kind: str  # mass | calc
    split: str  # Training | Test
    side: str
    density: int
    base_date: dt.date
    birth_date: str
    abnormalities: list[_Abnormality]


def _row_values(rng: np.random.Generator, cls: str, lesion_shape: str | None, bwc: bool) -> dict[str, str]:
    kind, pathology = cls.split("_")
    if pathology == "malignant":
        path_value, assessment, subtlety = "MALIGNANT", int(rng.choice([4, 4, 5])), int(rng.integers(3, 6))
    else:
        path_value = "BENIGN_WITHOUT_CALLBACK" if bwc else "BENIGN"
        assessment = int(rng.choice([2, 3]) if bwc else rng.choice([2, 3, 4]))
        subtlety = int(rng.integers(1, 6))
    table = _VALUES[cls]
    if kind == "mass":
        extra = {"mass shape": lesion_shape or _pick(rng, table["shape"]), "mass margins": _pick(rng, table["margins"])}
    else:
        extra = {"calc type": _pick(rng, table["type"]), "calc distribution": _pick(rng, table["distribution"])}
    return {"pathology": path_value, "assessment": str(assessment), "subtlety": str(subtlety), **extra}


def _plan_breasts(rng: np.random.Generator, per_class: int, width: int) -> list[_Breast]:
    """Patients (one breast each) carrying ``max(1, round(per_class / 2))`` abnormalities per class."""
    n_abn = max(1, round(per_class / 2))
    groups: list[list[str]] = []  # classes of the abnormalities of each breast
    for kind in ("mass", "calc"):
        pool = [f"{kind}_benign"] * n_abn + [f"{kind}_malignant"] * n_abn
        pool = [pool[i] for i in rng.permutation(len(pool))]
        i = 0
        while pool:
            take = 2 if (i % DOUBLE_EVERY == 3 and len(pool) >= 2) else 1
            groups.append(pool[:take])
            pool = pool[take:]
            i += 1
    # split by patient: every TEST_EVERY-th breast of each (first) class goes to Test, and every class
    # with two breasts or more gets at least one Test breast
    test = [False] * len(groups)
    for cls in CLASSES:
        members = [g for g, classes in enumerate(groups) if classes[0] == cls]
        for j, g in enumerate(members):
            test[g] = j % TEST_EVERY == TEST_EVERY // 2
        if len(members) >= 2 and not any(test[g] for g in members):
            test[members[-1]] = True
    # BENIGN_WITHOUT_CALLBACK for a share of the benign abnormalities, at least one per kind when a
    # kind has two benign abnormalities or more (so small datasets still show the value)
    bwc: dict[tuple[int, int], bool] = {}
    for kind in ("mass", "calc"):
        benign = [(g, j) for g, classes in enumerate(groups) for j, c in enumerate(classes) if c == f"{kind}_benign"]
        for key in benign:
            bwc[key] = bool(rng.random() < BWC_SHARE[kind])
        if len(benign) >= 2 and not any(bwc[k] for k in benign):
            bwc[benign[int(rng.integers(0, len(benign)))]] = True
    order = rng.permutation(len(groups))
    breasts = []
    number = 0
    epoch = dt.date(2016, 7, 1).toordinal()
    for g in order:
        number += int(rng.integers(1, 4))  # real ids have gaps (P_00001, P_00004, ...)
        kind = groups[g][0].split("_")[0]
        abns = []
        for abn_id, cls in enumerate(groups[g], start=1):
            shape = _pick(rng, _VALUES[cls]["shape"]) if cls.startswith("mass") else None
            lesion = _plan_lesion(rng, cls, width, shape or "")
            values = _row_values(rng, cls, shape, bwc.get((int(g), abn_id - 1), False))
            abns.append(_Abnormality(abn_id, cls, lesion, float(rng.uniform(0.25, 0.7)), values))
        breasts.append(
            _Breast(
                number=number,
                patient_id=f"P_{number:05d}",
                kind=kind,
                split="Test" if test[g] else "Training",
                side=str(rng.choice(["LEFT", "RIGHT"])),
                density=int(rng.integers(1, 5)),
                base_date=dt.date.fromordinal(epoch + int(rng.integers(0, 450))),
                birth_date=_birth_date(rng),
                abnormalities=abns,
            )
        )
    return breasts


def _birth_date(rng: np.random.Generator) -> str:
    d = dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 40 * 365)))
    return d.strftime("%Y%m%d")


# -- drawing -------------------------------------------------------------------------------------


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


class _NoiseBank:
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
    rng: np.random.Generator, noise: _NoiseBank, shape: tuple[int, int], anat: _Anatomy, density: int,
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


def _draw_lesion(img: np.ndarray, mask: np.ndarray, les: _Lesion, cy: float, cx: float, rot: float) -> None:
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
    rng: np.random.Generator, anat: _Anatomy, shape: tuple[int, int], les: _Lesion, depth: float,
    taken: list[tuple[float, float, float]],
) -> tuple[float, float, _Lesion]:
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


def _render(
    rng: np.random.Generator, noise: _NoiseBank, shape: tuple[int, int], view: str, side: str, density: int,
    abns: list[_Abnormality],
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


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box of the ROI plus a margin, always smaller than the image."""
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    m = max(2, round(0.15 * max(y1 - y0, x1 - x0)))
    h, w = mask.shape
    y0, y1, x0, x1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
    if (y1 - y0, x1 - x0) == (h, w):  # never the full size: the mask is told apart by size
        y1 -= 1
    return y0, y1, x0, x1


# -- DICOM ---------------------------------------------------------------------------------------


@dataclass
class DicomHeader:
    patient_id: str
    patient_name: str
    birth_date: str
    study_uid: str
    series_uid: str
    sop_uid: str
    date: dt.date
    time: str
    accession: str
    series_description: str
    instance_number: int
    laterality: str  # L | R
    view: str
    manufacturer: str = ""
    bits_stored: int = 16


def write_dicom(path: Path, pixels: np.ndarray, hdr: DicomHeader) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SC_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = hdr.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # fixed implementation ids: the bytes do not change with the installed pydicom version
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MAMMO_SYNTH_1"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    date = hdr.date.strftime("%Y%m%d")
    age = hdr.date.year - int(hdr.birth_date[:4])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = SC_IMAGE_STORAGE
    ds.SOPInstanceUID = hdr.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = hdr.time
    ds.AccessionNumber = hdr.accession
    ds.Modality = "MG"
    ds.ConversionType = "WSD"
    if hdr.manufacturer:  # the CBIS-DDSM images name none; the DDSM normals their scanner
        ds.Manufacturer = hdr.manufacturer
    ds.InstitutionName = "SYNTHETIC BREAST CENTER"
    ds.InstitutionAddress = "1 FAKE STREET, NOWHERE"
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.StudyDescription = "SYNTHETIC MAMMOGRAM"
    ds.SeriesDescription = hdr.series_description
    ds.PatientName = hdr.patient_name
    ds.PatientID = hdr.patient_id
    ds.PatientBirthDate = hdr.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = f"{age:03d}Y"
    ds.OtherPatientIDs = "MRN" + hdr.accession[::-1]
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = hdr.view
    ds.StudyInstanceUID = hdr.study_uid
    ds.SeriesInstanceUID = hdr.series_uid
    ds.StudyID = hdr.accession[-6:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = hdr.instance_number
    ds.Laterality = hdr.laterality
    ds.ImageLaterality = hdr.laterality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    if pixels.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        data = pixels.tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, hdr.bits_stored, hdr.bits_stored - 1
        data = pixels.astype("<u2").tobytes()
    ds.PixelRepresentation = 0
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# -- the step ------------------------------------------------------------------------------------


def _study_folder(rng: np.random.Generator, date: dt.date, study_uid: str) -> str:
    na = "NA-" if rng.random() < NA_STUDY_SHARE else ""
    return f"{date.strftime('%m-%d-%Y')}-DDSM-{na}{study_uid[-5:]}"


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(map(str, rng.integers(0, 10, size=n).tolist()))


def _hhmmss(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"


@dataclass
class _RoiPlan:
    """Names and UIDs of one abnormality's crop/mask series, planned before the image is drawn."""

    abn: _Abnormality
    folder: str
    directory: Path
    header: dict
    crop_sop: str
    mask_sop: str
    crop_instance: int  # the crop is 1-<crop_instance>.dcm, the mask the other file
    crop_csv: str
    mask_csv: str


def _plan_roi(rng: np.random.Generator, uids: _Uids, cbis_dir: Path, br: _Breast, view: str, folder: str,
              full_date: dt.date, abn: _Abnormality) -> _RoiPlan:
    roi_folder = f"{folder}_{abn.abn_id}"
    date = full_date + dt.timedelta(days=int(rng.integers(0, 2)))
    study, series = uids.new(), uids.new()
    crop_sop, mask_sop = uids.new(), uids.new()
    crop_instance = 1 if rng.random() < 0.5 else 2  # which of 1-1.dcm / 1-2.dcm is the crop varies
    swapped = rng.random() < SWAP_SHARE
    double_zero = br.kind == "mass" and rng.random() < MASS_DOUBLE_ZERO_SHARE
    directory = (cbis_dir / "CBIS-DDSM" / roi_folder / _study_folder(rng, date, study)
                 / f"1.000000-ROI mask images-{series[-5:]}")
    header = dict(patient_id=roi_folder, study_uid=study, series_uid=series, accession=_digits(rng, 8),
                  series_description="ROI mask images", patient_name=f"SYNTH^PATIENT{br.number}",
                  birth_date=br.birth_date, date=date, time=_hhmmss(rng), laterality=br.side[0], view=view)
    # CSV file names: 000000 <-> instance 1 (1-1.dcm), 000001 <-> instance 2 (1-2.dcm); then the
    # quirks: swapped columns in some rows, 000000.dcm named twice in a few mass rows
    crop_name, mask_name = f"{crop_instance - 1:06d}.dcm", f"{2 - crop_instance:06d}.dcm"
    if swapped:
        crop_name, mask_name = mask_name, crop_name
    if double_zero:
        crop_name = mask_name = "000000.dcm"
    base = f"{roi_folder}/{study}/{series}/"
    return _RoiPlan(abn, roi_folder, directory, header, crop_sop, mask_sop, crop_instance,
                    base + crop_name, base + mask_name)


def _csv_row(br: _Breast, view: str, abn: _Abnormality, full_csv: str, plan: _RoiPlan) -> list[str]:
    v = abn.values
    if br.kind == "mass":  # the real mass files quote the ROI column (the last) with an embedded newline
        middle, abn_type = [v["mass shape"], v["mass margins"]], "mass"
        paths = [full_csv, plan.crop_csv, plan.mask_csv + "\n"]
    else:  # ... and the real calc files the cropped-image column
        middle, abn_type = [v["calc type"], v["calc distribution"]], "calcification"
        paths = [full_csv, plan.crop_csv + "\n", plan.mask_csv]
    return [br.patient_id, str(br.density), br.side, view, str(abn.abn_id), abn_type, *middle,
            v["assessment"], v["pathology"], v["subtlety"], *paths]


def _write_cbis_image(
    rng: np.random.Generator, uids: _Uids, noise: _NoiseBank, cbis_dir: Path, shape: tuple[int, int],
    br: _Breast, view: str, img_rng: np.random.Generator,
) -> list[list[str]]:
    """One full mammogram with its abnormalities' crop/mask series; returns its CSV rows."""
    folder = f"{'Mass' if br.kind == 'mass' else 'Calc'}-{br.split}_{br.patient_id}_{br.side}_{view}"
    # plan every name and UID with the planning generator first (a fixed order of draws) ...
    full_date = br.base_date + dt.timedelta(days=int(rng.integers(0, 3)))
    study, series, sop = uids.new(), uids.new(), uids.new()
    full_dir = (cbis_dir / "CBIS-DDSM" / folder / _study_folder(rng, full_date, study)
                / f"1.000000-full mammogram images-{series[-5:]}")
    full_hdr = DicomHeader(patient_id=folder, patient_name=f"SYNTH^PATIENT{br.number}", birth_date=br.birth_date,
                       study_uid=study, series_uid=series, sop_uid=sop, date=full_date, time=_hhmmss(rng),
                       accession=_digits(rng, 8), series_description="full mammogram images", instance_number=1,
                       laterality=br.side[0], view=view)
    full_csv = f"{folder}/{study}/{series}/000000.dcm"
    plans = [_plan_roi(rng, uids, cbis_dir, br, view, folder, full_date, abn) for abn in br.abnormalities]
    # ... then draw with the image's own generator and write
    full, masks = _render(img_rng, noise, shape, view, br.side, br.density, br.abnormalities)
    write_dicom(full_dir / "1-1.dcm", full, full_hdr)
    rows = []
    for plan, mask in zip(plans, masks):
        y0, y1, x0, x1 = _crop_box(mask)
        crop = np.ascontiguousarray(full[y0:y1, x0:x1])
        mask_instance = 3 - plan.crop_instance
        write_dicom(plan.directory / f"1-{plan.crop_instance}.dcm", crop,
                     DicomHeader(sop_uid=plan.crop_sop, instance_number=plan.crop_instance, **plan.header))
        write_dicom(plan.directory / f"1-{mask_instance}.dcm", mask,
                     DicomHeader(sop_uid=plan.mask_sop, instance_number=mask_instance, **plan.header))
        rows.append(_csv_row(br, view, plan.abn, full_csv, plan))
    return rows


def _write_csvs(cbis_dir: Path, rows: dict[str, list[list[str]]]) -> None:
    cbis_dir.mkdir(parents=True, exist_ok=True)
    for (kind, _split), csv_name in CSV_NAMES.items():
        # as in the real files: sorted by patient, side, view, abnormality id; CRLF line ends
        body = sorted(rows[csv_name], key=lambda r: (r[0], r[2], r[3], int(r[4])))
        with open(cbis_dir / csv_name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")
            writer.writerow(MASS_HEADER if kind == "mass" else CALC_HEADER)
            writer.writerows(body)


def synthesize(
    out_dir: str | Path,
    per_class: int = 40,
    seed: int = 0,
    image_shape: tuple[int, int] = (512, 320),
    normals_per_class_factor: float = 1.0,
    progress: bool = True,
) -> SynthSummary:
    """Write a synthetic CBIS-DDSM download (``out_dir/cbis``) and DDSM-like normals (``out_dir/normals``).

    Each abnormal class (calc/mass x benign/malignant) gets ``max(1, round(per_class / 2))``
    abnormalities, each shown in a CC and an MLO image, so ``2 * round(per_class / 2)`` rows per class
    (``per_class`` when it is even). Normals: ``max(1, round(per_class * normals_per_class_factor / 2))``
    patients with four views each, i.e. about ``per_class * normals_per_class_factor`` normal CC images.
    ``image_shape`` is (rows, cols) of every full image. Same ``seed`` -> byte-identical output.
    An existing ``cbis/CBIS-DDSM`` tree and ``normals`` folder under ``out_dir`` are replaced (stale
    series of an earlier run would otherwise sit next to the new ones).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    cbis_dir, normals_dir = out_dir / "cbis", out_dir / "normals"
    shape = (int(image_shape[0]), int(image_shape[1]))
    if min(shape) < 64:
        raise ValueError(f"image_shape {shape} is too small (at least 64 x 64)")
    if per_class < 1 or normals_per_class_factor < 0:
        raise ValueError(f"per_class must be >= 1 and normals_per_class_factor >= 0 (got {per_class}, "
                         f"{normals_per_class_factor})")
    for stale in (cbis_dir / "CBIS-DDSM", normals_dir):
        if stale.exists():
            log.warning("replacing %s", stale)
            shutil.rmtree(stale)

    rng = np.random.default_rng(seed)
    uids = _Uids(rng)
    noise = _NoiseBank(seed, shape)
    breasts = _plan_breasts(rng, per_class, shape[1])
    n_normal = max(1, round(per_class * normals_per_class_factor / 2))
    rows: dict[str, list[list[str]]] = {name: [] for name in CSV_NAMES.values()}
    per_class_rows = {c: 0 for c in CLASSES}
    with tqdm(total=2 * len(breasts) + 4 * n_normal, desc="synth", unit="image", disable=not progress) as bar:
        image_no = 0
        for br in breasts:
            csv_name = CSV_NAMES[(br.kind, br.split)]
            for view in ("CC", "MLO"):
                image_no += 1
                img_rng = np.random.default_rng([seed, 1, image_no])
                rows[csv_name] += _write_cbis_image(rng, uids, noise, cbis_dir, shape, br, view, img_rng)
                for abn in br.abnormalities:
                    per_class_rows[abn.cls] += 1
                bar.update(1)
        _write_csvs(cbis_dir, rows)
        manifest = _write_normals(rng, noise, normals_dir, n_normal, shape, seed, bar)

    summary = SynthSummary(
        out_dir=str(out_dir),
        cbis_dir=str(cbis_dir),
        normals_dir=str(normals_dir),
        rows_per_csv={name: len(r) for name, r in rows.items()},
        abnormalities_per_class=per_class_rows,
        normal_images=len(manifest),
        seconds=round(time.perf_counter() - t_start, 3),
    )
    log.info("synthesized %s", summary)
    return summary


def _write_normals(
    rng: np.random.Generator, noise: _NoiseBank, normals_dir: Path, n_patients: int, shape: tuple[int, int],
    seed: int, bar,
) -> list[list[str]]:
    """DDSM-like normal mammograms: four views per patient, one scanner per patient."""
    normals_dir.mkdir(parents=True, exist_ok=True)
    uids = _Uids(rng)
    manifest: list[list[str]] = []
    epoch = dt.date(1995, 1, 1).toordinal()
    scanners = list(SCANNERS)
    image_no = 0
    for n in range(1, n_patients + 1):
        pid = f"N_{n:05d}"
        scanner = scanners[int(rng.integers(0, len(scanners)))]
        bits = SCANNERS[scanner]
        date = dt.date.fromordinal(epoch + int(rng.integers(0, 5 * 365)))
        birth = _birth_date(rng)
        study = uids.new(NORMAL_UID_PREFIX)
        accession = _digits(rng, 8)
        densities = int(rng.integers(1, 5))
        for side in ("LEFT", "RIGHT"):
            for view in ("CC", "MLO"):
                image_no += 1
                img_rng = np.random.default_rng([seed, 2, image_no])
                full, _ = _render(img_rng, noise, shape, view, side, densities, [])
                if bits == 12:  # Howtek / Lumisys: 12-bit scanners
                    full = (full >> 4).astype(np.uint16)
                rel = f"{pid}/{pid}_{side}_{view}.dcm"
                hdr = DicomHeader(
                    patient_id=pid, patient_name=f"SYNTH^NORMAL{n}", birth_date=birth, study_uid=study,
                    series_uid=uids.new(NORMAL_UID_PREFIX), sop_uid=uids.new(NORMAL_UID_PREFIX), date=date,
                    time=_hhmmss(rng), accession=accession, series_description=f"{side} {view}",
                    instance_number=1, laterality=side[0], view=view, manufacturer=scanner, bits_stored=bits,
                )
                write_dicom(normals_dir / rel, full, hdr)
                manifest.append([pid, side, view, rel, scanner, str(bits)])
                bar.update(1)
    with open(normals_dir / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["patient_id", "side", "view", "path", "scanner", "bits_stored"])
        writer.writerows(manifest)
    return manifest
