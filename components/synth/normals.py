"""Synthetic DDSM-like normal mammograms: four views per patient, one scanner (16 or 12 bit) each."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import numpy as np

from mammo.components.contracts import NORMALS_MANIFEST
from mammo.components.synth.dicom import NORMAL_UID_PREFIX, DicomHeader, Uids, birth_date, digits, hhmmss, write_dicom
from mammo.components.synth.drawing import NoiseBank, render

SCANNERS = {"DBA": 16, "HOWTEK": 12, "LUMISYS": 12}


def write_normals(
    rng: np.random.Generator, noise: NoiseBank, normals_dir: Path, n_patients: int, shape: tuple[int, int],
    seed: int, bar=None,
) -> list[list[str]]:
    """DDSM-like normal mammograms: four views per patient, one scanner per patient; writes the manifest.

    ``bar``: a progress bar advanced by one per image (optional). Returns the manifest rows.
    """
    normals_dir.mkdir(parents=True, exist_ok=True)
    uids = Uids(rng)
    manifest: list[list[str]] = []
    epoch = dt.date(1995, 1, 1).toordinal()
    scanners = list(SCANNERS)
    image_no = 0
    for n in range(1, n_patients + 1):
        pid = f"N_{n:05d}"
        scanner = scanners[int(rng.integers(0, len(scanners)))]
        bits = SCANNERS[scanner]
        date = dt.date.fromordinal(epoch + int(rng.integers(0, 5 * 365)))
        birth = birth_date(rng)
        study = uids.new(NORMAL_UID_PREFIX)
        accession = digits(rng, 8)
        densities = int(rng.integers(1, 5))
        for side in ("LEFT", "RIGHT"):
            for view in ("CC", "MLO"):
                image_no += 1
                img_rng = np.random.default_rng([seed, 2, image_no])
                full, _ = render(img_rng, noise, shape, view, side, densities, [])
                if bits == 12:  # Howtek / Lumisys: 12-bit scanners
                    full = (full >> 4).astype(np.uint16)
                rel = f"{pid}/{pid}_{side}_{view}.dcm"
                hdr = DicomHeader(
                    patient_id=pid, patient_name=f"SYNTH^NORMAL{n}", birth_date=birth, study_uid=study,
                    series_uid=uids.new(NORMAL_UID_PREFIX), sop_uid=uids.new(NORMAL_UID_PREFIX), date=date,
                    time=hhmmss(rng), accession=accession, series_description=f"{side} {view}",
                    instance_number=1, laterality=side[0], view=view, manufacturer=scanner, bits_stored=bits,
                )
                write_dicom(normals_dir / rel, full, hdr)
                manifest.append([pid, side, view, rel, scanner, str(bits)])
                if bar is not None:
                    bar.update(1)
    with open(normals_dir / NORMALS_MANIFEST, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["patient_id", "side", "view", "path", "scanner", "bits_stored"])
        writer.writerows(manifest)
    return manifest
