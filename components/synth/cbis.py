"""The synthetic CBIS-DDSM download: patients, abnormalities, CSV rows and the NBIA folder tree.

Quirks of the real CSVs reproduced on purpose:

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
* ROI masks are 8-bit 0/255 DICOMs, full images and crops 16-bit.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mammo.components.contracts import CBIS_CSVS
from mammo.components.synth.dicom import DicomHeader, Uids, birth_date, digits, hhmmss, write_dicom
from mammo.components.synth.drawing import Lesion, NoiseBank, crop_box, plan_lesion, render

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
#: the four CSV files by (kind, split), named as in the real download
CSV_NAMES = dict(zip([("mass", "Training"), ("mass", "Test"), ("calc", "Training"), ("calc", "Test")], CBIS_CSVS))
#: the abnormal classes, named as in ``mammo.components.config.CLASS_NAMES``
CLASSES = ("calc_benign", "calc_malignant", "mass_benign", "mass_malignant")

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


def pick(rng: np.random.Generator, table: list[tuple[str, float]]) -> str:
    names, weights = zip(*table)
    p = np.asarray(weights, dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


@dataclass
class _Abnormality:
    abn_id: int
    cls: str
    lesion: Lesion
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
        extra = {"mass shape": lesion_shape or pick(rng, table["shape"]), "mass margins": pick(rng, table["margins"])}
    else:
        extra = {"calc type": pick(rng, table["type"]), "calc distribution": pick(rng, table["distribution"])}
    return {"pathology": path_value, "assessment": str(assessment), "subtlety": str(subtlety), **extra}


def plan_breasts(rng: np.random.Generator, per_class: int, width: int) -> list[_Breast]:
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
            shape = pick(rng, _VALUES[cls]["shape"]) if cls.startswith("mass") else None
            lesion = plan_lesion(rng, cls, width, shape or "")
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
                birth_date=birth_date(rng),
                abnormalities=abns,
            )
        )
    return breasts


def _study_folder(rng: np.random.Generator, date: dt.date, study_uid: str) -> str:
    na = "NA-" if rng.random() < NA_STUDY_SHARE else ""
    return f"{date.strftime('%m-%d-%Y')}-DDSM-{na}{study_uid[-5:]}"


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


def _plan_roi(rng: np.random.Generator, uids: Uids, cbis_dir: Path, br: _Breast, view: str, folder: str,
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
    header = dict(patient_id=roi_folder, study_uid=study, series_uid=series, accession=digits(rng, 8),
                  series_description="ROI mask images", patient_name=f"SYNTH^PATIENT{br.number}",
                  birth_date=br.birth_date, date=date, time=hhmmss(rng), laterality=br.side[0], view=view)
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


def write_cbis_image(
    rng: np.random.Generator, uids: Uids, noise: NoiseBank, cbis_dir: Path, shape: tuple[int, int],
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
                       study_uid=study, series_uid=series, sop_uid=sop, date=full_date, time=hhmmss(rng),
                       accession=digits(rng, 8), series_description="full mammogram images", instance_number=1,
                       laterality=br.side[0], view=view)
    full_csv = f"{folder}/{study}/{series}/000000.dcm"
    plans = [_plan_roi(rng, uids, cbis_dir, br, view, folder, full_date, abn) for abn in br.abnormalities]
    # ... then draw with the image's own generator and write
    full, masks = render(img_rng, noise, shape, view, br.side, br.density, br.abnormalities)
    write_dicom(full_dir / "1-1.dcm", full, full_hdr)
    rows = []
    for plan, mask in zip(plans, masks):
        y0, y1, x0, x1 = crop_box(mask)
        crop = np.ascontiguousarray(full[y0:y1, x0:x1])
        mask_instance = 3 - plan.crop_instance
        write_dicom(plan.directory / f"1-{plan.crop_instance}.dcm", crop,
                     DicomHeader(sop_uid=plan.crop_sop, instance_number=plan.crop_instance, **plan.header))
        write_dicom(plan.directory / f"1-{mask_instance}.dcm", mask,
                     DicomHeader(sop_uid=plan.mask_sop, instance_number=mask_instance, **plan.header))
        rows.append(_csv_row(br, view, plan.abn, full_csv, plan))
    return rows


def write_csvs(cbis_dir: Path, rows: dict[str, list[list[str]]]) -> None:
    cbis_dir.mkdir(parents=True, exist_ok=True)
    for (kind, _split), csv_name in CSV_NAMES.items():
        # as in the real files: sorted by patient, side, view, abnormality id; CRLF line ends
        body = sorted(rows[csv_name], key=lambda r: (r[0], r[2], r[3], int(r[4])))
        with open(cbis_dir / csv_name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")
            writer.writerow(MASS_HEADER if kind == "mass" else CALC_HEADER)
            writer.writerows(body)
