"""Synth: a small synthetic dataset in the real CBIS-DDSM download layout, with learnable lesions.

What :func:`synthesize` writes under ``out_dir``::

    cbis/mass_case_description_{train,test}_set.csv     the real headers, values and quirks
    cbis/calc_case_description_{train,test}_set.csv
    cbis/CBIS-DDSM/<folder>/<MM-DD-YYYY>-DDSM[-NA]-<study5>/1.000000-full mammogram images-<series5>/1-1.dcm
    cbis/CBIS-DDSM/<folder>_<abn>/<MM-DD-YYYY>-DDSM[-NA]-<study5>/1.000000-ROI mask images-<series5>/1-{1,2}.dcm
    normals/<N_xxxxx>/<N_xxxxx>_<SIDE>_<VIEW>.dcm        DDSM-like normals (three scanners, 16 / 12 bit)
    normals/manifest.csv                                 patient_id,side,view,path,scanner,bits_stored

Pieces: :mod:`.cbis` (patients, CSV rows and quirks, the NBIA tree), :mod:`.normals`,
:mod:`.drawing` (anatomy, lesions, masks) and :mod:`.dicom` (UIDs and the file writer).

Determinism: everything is planned with one ``numpy`` generator seeded by ``seed`` (UIDs, dates,
layout), and each image is drawn with its own generator derived from ``(seed, image number)``; no
clock or OS randomness is used, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammo.components.synth.cbis import (
    CALC_HEADER,
    CLASSES,
    CSV_NAMES,
    MASS_HEADER,
    plan_breasts,
    write_cbis_image,
    write_csvs,
)
from mammo.components.synth.dicom import DicomHeader, Uids, write_dicom
from mammo.components.synth.drawing import NoiseBank
from mammo.components.synth.normals import SCANNERS, write_normals

log = logging.getLogger(__name__)


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
    uids = Uids(rng)
    noise = NoiseBank(seed, shape)
    breasts = plan_breasts(rng, per_class, shape[1])
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
                rows[csv_name] += write_cbis_image(rng, uids, noise, cbis_dir, shape, br, view, img_rng)
                for abn in br.abnormalities:
                    per_class_rows[abn.cls] += 1
                bar.update(1)
        write_csvs(cbis_dir, rows)
        manifest = write_normals(rng, noise, normals_dir, n_normal, shape, seed, bar)

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


__all__ = ["CALC_HEADER", "CLASSES", "MASS_HEADER", "SCANNERS", "DicomHeader", "SynthSummary", "synthesize",
           "write_dicom"]
