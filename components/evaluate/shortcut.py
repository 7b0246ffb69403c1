"""Shortcut audit: how well does patch *metadata alone* predict the class?

A classifier can score well by reading the field of view instead of the pathology: if every normal
crop has the same side while lesion crops follow the lesion, or only lesion crops contain padding,
the class is written in the patch's geometry. The audit fits a multinomial logistic regression on
metadata only (crop side in mm, padding fraction, scanner, bit depth, image source; whichever of
them the balanced dataset's ``splits.parquet`` carries) with patient-grouped cross-validation
(``GroupKFold``: no patient in a training fold and its held-out fold) and reports the out-of-fold
macro AUC. A model whose test macro AUC is not clearly above it may be reading the shortcut.

Numeric features go through a spline basis, so a non-monotonic rule ("normals have exactly this
side") is as visible to the audit as a threshold.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

from mammo.components.config import CLASS_NAMES
from mammo.components.evaluate.metrics import nanmean, rank_auc

log = logging.getLogger(__name__)

#: audit features: (name in the report, candidate columns in order of preference, kind)
NUMERIC_FEATURES: dict[str, tuple[str, ...]] = {
    "crop_side_mm": ("crop_mm", "crop_side_mm", "crop_size_mm"),
    "padding_fraction": ("padding_fraction", "pad_fraction", "padded_fraction"),
}
CATEGORICAL_FEATURES: dict[str, tuple[str, ...]] = {
    "scanner": ("scanner",),
    "bits_stored": ("bits_stored", "bit_depth"),
    "image_source": ("source", "image_source"),
}


def audit_features(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """(feature frame, {feature: how it was obtained}, features not available) from a patch table.

    The crop side in mm falls back to ``crop_size`` (pixels) times ``pixel_spacing_mm`` and, without a
    spacing, to the crop side in pixels (said so in the description).
    """
    feats, used, missing = pd.DataFrame(index=table.index), {}, []
    for name, candidates in {**NUMERIC_FEATURES, **CATEGORICAL_FEATURES}.items():
        column = next((c for c in candidates if c in table.columns and table[c].notna().any()), None)
        if column is not None:
            feats[name] = table[column] if name in CATEGORICAL_FEATURES else pd.to_numeric(table[column], errors="coerce")
            used[name] = f"column {column!r}"
        elif name == "crop_side_mm" and "crop_size" in table.columns:
            if "pixel_spacing_mm" in table.columns and pd.to_numeric(table["pixel_spacing_mm"], errors="coerce").notna().any():
                feats[name] = pd.to_numeric(table["crop_size"]) * pd.to_numeric(table["pixel_spacing_mm"], errors="coerce")
                used[name] = "crop_size x pixel_spacing_mm"
            else:
                feats["crop_side_px"] = pd.to_numeric(table["crop_size"], errors="coerce")
                used["crop_side_px"] = "column 'crop_size' (pixels: no pixel spacing in the table)"
        else:
            missing.append(name)
    for name in list(feats.columns):
        if name in CATEGORICAL_FEATURES:
            feats[name] = feats[name].astype(object).where(feats[name].notna(), "unknown").astype(str)
        else:
            feats[name] = feats[name].fillna(feats[name].median() if feats[name].notna().any() else 0.0)
    return feats, used, missing


def _labels(table: pd.DataFrame) -> np.ndarray:
    if "label_index" in table.columns:
        return table["label_index"].to_numpy(dtype=int)
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    return np.array([index[v] if v in index else int(v) for v in table["label"]], dtype=int)


def shortcut_audit(table: pd.DataFrame, folds: int = 5, seed: int = 0) -> dict:
    """Out-of-fold macro AUC of a metadata-only classifier (see the module docstring).

    ``table`` holds one row per patch with ``patient_id``, ``label_index`` (or ``label``) and
    metadata columns; repeated ``patch_id`` rows (oversampling) count once. Returns a dict with
    ``available`` and, when it is, ``macro_auc``, ``per_class_auc``, ``features`` (used, and how),
    ``missing_features``, ``n``, ``n_patients`` and ``folds``.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, SplineTransformer, StandardScaler

    method = (f"multinomial logistic regression on patch metadata only, {folds}-fold patient-grouped "
              "cross-validation (GroupKFold), out-of-fold one-vs-rest macro AUC")
    if folds < 2:
        return {"available": False, "note": "shortcut audit off (evaluate.shortcut_folds < 2)"}
    if "patch_id" in table.columns:
        table = table.drop_duplicates("patch_id")
    table = table.reset_index(drop=True)
    feats, used, missing = audit_features(table)
    if feats.empty:
        return {"available": False, "missing_features": missing,
                "note": "no metadata column to audit (none of crop side, padding, scanner, bit depth, source)"}
    y = _labels(table)
    groups = table["patient_id"].astype(str).to_numpy()
    n_patients = len(np.unique(groups))
    if n_patients < 2 or len(np.unique(y)) < 2:
        return {"available": False, "features": used, "missing_features": missing,
                "note": f"too little data for a grouped cross-validation ({n_patients} patients, "
                        f"{len(np.unique(y))} classes)"}
    numeric = [c for c in feats.columns if c not in CATEGORICAL_FEATURES]
    categorical = [c for c in feats.columns if c in CATEGORICAL_FEATURES]
    prep = ColumnTransformer(
        [*([("num", make_pipeline(StandardScaler(), SplineTransformer(n_knots=6, degree=3)), numeric)] if numeric else []),
         *([("cat", OneHotEncoder(handle_unknown="ignore"), categorical)] if categorical else [])])
    model = make_pipeline(prep, LogisticRegression(max_iter=2000, C=1.0))
    cv = GroupKFold(n_splits=min(folds, n_patients))
    with warnings.catch_warnings():  # a training fold without some class is expected on small data
        warnings.simplefilter("ignore")
        oof = cross_val_predict(model, feats, y, groups=groups, cv=cv, method="predict_proba")
    present = np.unique(y)
    probs = np.zeros((len(y), len(CLASS_NAMES)))
    probs[:, present] = oof
    per_class = {name: rank_auc(y == i, probs[:, i]) for i, name in enumerate(CLASS_NAMES)}
    result = {
        "available": True,
        "method": method,
        "macro_auc": nanmean(list(per_class.values())),
        "per_class_auc": per_class,
        "features": used,
        "missing_features": missing,
        "n": int(len(y)),
        "n_patients": int(n_patients),
        "folds": int(cv.get_n_splits()),
    }
    log.info("shortcut audit: metadata-only macro AUC %.4f from %s (%d patches, %d patients)",
             result["macro_auc"], sorted(used), len(y), n_patients)
    return result


def compare_with_model(audit: dict, model_macro_auc: float) -> dict:
    """The audit beside the model's test macro AUC, with ``model_minus_shortcut`` (the gate judges it)."""
    out = {**audit, "model_macro_auc": model_macro_auc}
    if audit.get("available"):
        out["model_minus_shortcut"] = float(model_macro_auc) - float(audit["macro_auc"])
    return out
