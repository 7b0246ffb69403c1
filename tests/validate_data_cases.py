"""A small valid ``cases`` table (the schema ingest writes) for the validate_data tests."""

from __future__ import annotations

import pandas as pd

from mammo.components.contracts import CASE_COLUMNS, NULLABLE_INT_COLUMNS

CLASSES = [
    # label, abnormality_type, pathology
    ("calc_benign", "calcification", "benign"),
    ("calc_malignant", "calcification", "malignant"),
    ("mass_benign", "mass", "benign"),
    ("mass_malignant", "mass", "malignant"),
    ("normal", "normal", "normal"),
]


def make_cases(per_class: int = 4) -> pd.DataFrame:
    """A small valid ``cases`` frame: ``per_class`` rows per class, one patient per row.

    Rows alternate between the official train and test split (patients never overlap); every
    fourth row (k = 2, 6, ...) is in the validation subset (so ``per_class >= 3`` gives every class
    a validation and a test case); abnormal rows have a mask of the image's size, normal rows have
    no mask, crop or mask size.
    """
    rows = []
    for index, (label, abnormality, pathology) in enumerate(CLASSES):
        for k in range(per_class):
            normal = label == "normal"
            patient = f"{'N' if normal else 'P'}_{index * 100 + k:05d}"
            side, view = ("LEFT", "CC") if k % 2 == 0 else ("RIGHT", "MLO")
            rows.append(
                {
                    "case_id": f"{label}_{patient}_{side}_{view}_1",
                    "patient_id": patient,
                    "label": label,
                    "label_index": index,
                    "abnormality_type": abnormality,
                    "pathology": pathology,
                    "split": "train" if k % 2 == 0 else "test",
                    "subset": ("validation" if k % 4 == 2 else "train") if k % 2 == 0 else "test",
                    "side": side,
                    "view": view,
                    "abnormality_id": 0 if normal else 1,
                    "breast_density": None if normal else 2,
                    "assessment": None if normal else 4,
                    "subtlety": None if normal else 3,
                    "mass_shape": "OVAL" if abnormality == "mass" else None,
                    "mass_margins": "CIRCUMSCRIBED" if abnormality == "mass" else None,
                    "calc_type": "PLEOMORPHIC" if abnormality == "calcification" else None,
                    "calc_distribution": "CLUSTERED" if abnormality == "calcification" else None,
                    "image_uri": f"/data/{patient}/full.dcm",
                    "roi_mask_uri": "" if normal else f"/data/{patient}/mask.dcm",
                    "cropped_uri": "" if normal else f"/data/{patient}/crop.dcm",
                    "image_rows": 4000,
                    "image_cols": 3000,
                    "mask_rows": None if normal else 4000,
                    "mask_cols": None if normal else 3000,
                    "bits_stored": 12 if normal else 16,
                    "photometric": "MONOCHROME2",
                    "modality": "MG" if k % 3 else "",
                    "image_format": "dicom" if k % 3 else "png",
                    "pixel_spacing_mm": 0.05 if normal else None,
                    "pixel_spacing_source": "header" if normal else "default",
                    "source": "ddsm-normal" if normal else "cbis-ddsm",
                    "scanner": "HOWTEK" if normal else "",
                    "source_file": "normals.csv" if normal else f"{abnormality}_case_description_train_set.csv",
                    "source_row": k + 1,
                }
            )
    # columns a newer schema adds and this table does not know stay empty (the suite judges them)
    df = pd.DataFrame(rows).reindex(columns=CASE_COLUMNS)
    for col in NULLABLE_INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    return df
