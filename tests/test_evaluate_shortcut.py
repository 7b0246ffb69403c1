"""The shortcut audit: a metadata-only classifier with patient-grouped cross-validation."""

import numpy as np
import pandas as pd

from mammo.components.evaluate.shortcut import audit_features, compare_with_model, shortcut_audit


def manifest(encoded: bool, n_patients: int = 200, seed: int = 0) -> pd.DataFrame:
    """Two patches per patient; the crop side carries the class only when ``encoded``."""
    rng = np.random.default_rng(seed)
    label = np.repeat(rng.integers(0, 5, n_patients), 2)
    side = 10 + 8 * label + rng.normal(0, 1, len(label)) if encoded else rng.uniform(10, 50, len(label))
    return pd.DataFrame({"patch_id": [f"p{i}" for i in range(len(label))],
                         "patient_id": np.repeat([f"P{i}" for i in range(n_patients)], 2),
                         "label_index": label, "crop_side_mm": side, "scanner": rng.choice(["A", "B"], len(label)),
                         "bits_stored": 12, "source": "cbis-ddsm"})


def test_a_label_written_in_the_crop_side_is_found():
    audit = shortcut_audit(manifest(encoded=True), folds=5)
    assert audit["available"] and audit["macro_auc"] > 0.95
    assert audit["n_patients"] == 200 and audit["folds"] == 5
    assert set(audit["features"]) == {"crop_side_mm", "scanner", "bits_stored", "image_source"}
    assert audit["missing_features"] == ["padding_fraction"]


def test_metadata_without_the_label_scores_chance():
    audit = shortcut_audit(manifest(encoded=False), folds=5)
    assert 0.4 < audit["macro_auc"] < 0.6


def test_the_old_protocol_fixed_normal_side_is_found_in_pixels_times_spacing():
    """Every normal crop has one side, lesion crops follow the lesion: the audit sees the normals."""
    rng = np.random.default_rng(1)
    m = manifest(encoded=False).drop(columns=["crop_side_mm"])
    m["crop_size"] = np.where(m["label_index"] == 4, 600, rng.integers(48, 790, len(m)))
    m["pixel_spacing_mm"] = 0.05
    feats, used, _ = audit_features(m)
    assert used["crop_side_mm"] == "crop_size x pixel_spacing_mm" and feats["crop_side_mm"].iloc[0] > 0
    audit = shortcut_audit(m, folds=5)
    assert audit["per_class_auc"]["normal"] > 0.9  # chance: 0.5


def test_degrades_gracefully_and_says_what_it_used():
    m = manifest(encoded=True)[["patch_id", "patient_id", "label_index"]]
    audit = shortcut_audit(m)
    assert audit["available"] is False and "no metadata column" in audit["note"]
    px = manifest(encoded=True).drop(columns=["crop_side_mm"]).assign(crop_size=100)
    assert audit_features(px)[1]["crop_side_px"].startswith("column 'crop_size' (pixels")
    assert shortcut_audit(manifest(encoded=True), folds=0)["available"] is False
    # oversampled rows (a patch twice) count once
    doubled = pd.concat([manifest(encoded=True)] * 2, ignore_index=True)
    assert shortcut_audit(doubled)["n"] == 400


def test_compared_with_the_model():
    audit = {"available": True, "macro_auc": 0.8}
    assert compare_with_model(audit, 0.9)["model_minus_shortcut"] == 0.9 - 0.8
    assert "model_minus_shortcut" not in compare_with_model({"available": False}, 0.9)
