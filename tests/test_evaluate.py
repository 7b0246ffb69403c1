"""The evaluate step: subgroups, the record and its report, the real step on TFRecords, the KFP body."""

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from mammo.components.config import CLASS_NAMES, EvaluateConfig
from mammo.components.evaluate.logic import evaluate_predictions, sample_attributes, subgroup_metrics
from mammo.components.evaluate.metrics import compute_metrics
from mammo.components.evaluate.report import render_html
from test_evaluate_metrics import fixed_predictions


# -- subgroups ----------------------------------------------------------------------------------


def _test_records():
    """8 test patches: 2 mass (CC/MLO of one lesion), 2 calc, 4 normal from two scanners."""
    records = pd.DataFrame({
        "patch_id": ["m1", "m2", "c1", "c2", "n1#0", "n1#1", "n2#0", "n2#1"],
        "case_id": ["Mass-Test_P_1_LEFT_CC_1", "Mass-Test_P_1_LEFT_MLO_1", "Calc-Test_P_2_RIGHT_CC_1",
                    "Calc-Test_P_3_RIGHT_MLO_2", "Normal_A_LEFT_CC", "Normal_A_LEFT_CC", "Normal_B_RIGHT_CC",
                    "Normal_B_RIGHT_CC"],
        "patient_id": ["P_1", "P_1", "P_2", "P_3", "A", "A", "B", "B"],
        "source": ["cbis-ddsm"] * 4 + ["ddsm-normal"] * 4,
        "label": [3, 2, 0, 1, 4, 4, 4, 4],
    })
    splits = pd.DataFrame({"patch_id": records["patch_id"].tolist() + ["m1"],  # a repeated (oversampled) row
                           "scanner": ["HOWTEK"] * 4 + ["LUMISYS"] * 2 + ["DBA"] * 2 + ["HOWTEK"]})
    pred = np.array([3, 3, 0, 0, 4, 4, 0, 4])  # m2 wrong (BM -> MM), c2 wrong, one DBA normal wrong
    probs = np.full((8, 5), 0.05)
    probs[np.arange(8), pred] = 0.8
    probs[1, 3] = 0.7  # the benign mass scores lower on MM than the malignant one
    return records, splits, records["label"].to_numpy(), probs


def test_subgroups_by_abnormality_scanner_and_view_with_hand_counts():
    records, splits, y, probs = _test_records()
    attrs = sample_attributes(records, splits)
    assert len(attrs) == 8  # the oversampled duplicate in splits.parquet adds no row
    sg = subgroup_metrics(y, probs, attrs)
    by = {col: {g["value"]: g for g in sg[col]["groups"]} for col in ("abnormality_type", "scanner", "view", "source")}
    assert by["abnormality_type"]["mass"]["accuracy"] == 0.5 and by["abnormality_type"]["mass"]["n_patients"] == 1
    assert by["abnormality_type"]["normal"]["recall"] == {"normal": 0.75}
    assert by["scanner"]["DBA"]["accuracy"] == 0.5 and by["scanner"]["LUMISYS"]["accuracy"] == 1.0
    assert by["view"]["CC"]["n"] == 6 and by["view"]["MLO"]["accuracy"] == 0.0
    assert by["source"]["ddsm-normal"]["small"] is True
    # within the mass subgroup, mass_malignant vs mass_benign is separable by the MM score: AUC 1
    assert by["abnormality_type"]["mass"]["auc"]["mass_malignant"] == 1.0
    assert sg["breast_density"] == {"available": False, "note": "no 'breast_density' column in the patch manifest"}


def test_evaluation_result_has_intervals_calibration_subgroups_and_renders():
    records, splits, y, probs = _test_records()
    yv, pv = fixed_predictions(n=100, seed=2)
    val = pd.DataFrame({"patch_id": [f"v{i}" for i in range(100)], "case_id": "x", "source": "cbis-ddsm",
                        "patient_id": [f"V{i}" for i in range(100)], "label": yv})
    cfg = EvaluateConfig(bootstrap_resamples=50, specificities=[0.9])
    result = evaluate_predictions({"validation": (yv, pv, val), "test": (y, probs, records)}, cfg, seed=0,
                                  splits=splits)
    assert result["test"]["n_patients"] == 5 and result["test"]["ci"]["n_patients"] == 5
    assert result["validation"]["ci"]["n_patients"] == 100  # every split has its own intervals (the model card's)
    assert set(result["validation"]["ci"]["per_class_sensitivity"]) == set(CLASS_NAMES)
    assert result["calibration"]["temperature"] > 0
    assert set(result["test"]["subgroups"]) == {"abnormality_type", "source", "scanner", "breast_density", "view"}
    json.dumps(result)  # the record is plain JSON
    page = render_html({"backbone": "resnet50", **result})
    assert page.index("macro AUC") < page.index("Per class")  # headline numbers first
    assert "Reliability" in page and "By scanner" in page and "breast density" in page and "MM (mass_malignant)" in page
    assert "patient-level percentile bootstrap" in page
    sens = result["test"]["per_class"]["mass_benign"]["sensitivity"]
    low, high = result["test"]["ci"]["per_class_sensitivity"]["mass_benign"]
    assert f"{sens:.4f} [{low:.4f}, {high:.4f}]" in page  # per-class rates with their intervals


def test_html_report_has_tables_and_roc():
    y = np.repeat(np.arange(5), 3)
    m = compute_metrics(y, np.eye(5)[y])
    page = render_html({"backbone": "x", "validation": asdict(m), "test": asdict(m)})
    assert "Confusion matrix" in page and "<polyline" in page and "mass_malignant" in page


def _tiny_model_and_dataset(tmp_path):
    """Real TFRecords (validation, test), splits.parquet and a tiny Keras model saved as the train step does."""
    import keras

    from mammo.components.imaging import encode_png
    from mammo.components.tfrecords import serialize_patch, write_records

    rng = np.random.default_rng(0)
    rows = []
    for split in ("validation", "test"):
        recs = []
        for i in range(20):
            label = i % 5
            img = np.full((8, 8), 40 * label + 10, np.uint8) + rng.integers(0, 5, (8, 8)).astype(np.uint8)
            meta = {"patch_id": f"{split}{i}", "case_id": f"Mass-Test_P_{i // 2}_LEFT_{'CC' if i % 2 else 'MLO'}_1",
                    "patient_id": f"{split}P{i // 2}", "split": split, "source": "cbis-ddsm"}
            recs.append(serialize_patch(encode_png(img), label, meta))
            rows.append({"patch_id": meta["patch_id"], "scanner": "HOWTEK", "patient_id": meta["patient_id"],
                         "label_index": label, "crop_size": 100 + i, "source": "cbis-ddsm", "bits_stored": 16})
        write_records(tmp_path / f"{split}.tfrecord", recs)
    pd.DataFrame(rows).to_parquet(tmp_path / "splits.parquet")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5, activation="softmax")])
    (tmp_path / "model").mkdir()
    model.save(tmp_path / "model" / "model.keras")
    (tmp_path / "model" / "report.json").write_text(json.dumps({"step": "train", "backbone": "tiny", "seconds": 60.0}))
    return tmp_path / "model", tmp_path


def _full_images(tmp_path):
    """An ingest output whose cases are five of the test split's, each a full image with an ROI mask."""
    from PIL import Image

    from mammo.components.contracts import CASES

    rng = np.random.default_rng(1)
    rows = []
    for i in range(5):
        image = rng.normal(90, 10, (48, 40)).clip(0, 255).astype(np.uint8)
        mask = np.zeros_like(image)
        image[20:26, 14:20] = 220
        mask[20:26, 14:20] = 255
        Image.fromarray(image).save(tmp_path / f"full{i}.png")
        Image.fromarray(mask).save(tmp_path / f"mask{i}.png")
        rows.append({"case_id": f"Mass-Test_P_{i // 2}_LEFT_{'CC' if i % 2 else 'MLO'}_1", "label": CLASS_NAMES[i],
                     "image_uri": str(tmp_path / f"full{i}.png"),
                     "roi_mask_uri": str(tmp_path / f"mask{i}.png") if i < 4 else None, "pixel_spacing_mm": 0.5})
    (tmp_path / "cases").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "cases" / CASES)
    return tmp_path / "cases"


def test_evaluate_run_on_tfrecords_writes_consistent_outputs(tmp_path):
    """The real step: a tiny Keras model over real TFRecords (no mocks), outputs read back."""
    from mammo.components.config import load_config
    from mammo.components.contracts import read_report
    from mammo.components.evaluate.logic import run

    model_dir, dataset = _tiny_model_and_dataset(tmp_path)
    cases = _full_images(tmp_path)
    out = tmp_path / "eval"
    cfg = load_config("demo", overrides=["evaluate.bootstrap_resamples=20", "evaluate.shortcut_folds=3", "seed=1",
                                         "patches.normal_crop_mm=4"])
    result = run(model_dir, dataset, out, cfg, cases=cases)  # the backbone comes from the train report
    on_disk = json.loads((out / "metrics.json").read_text())
    assert read_report(out)["step"] == "evaluate" and result["backbone"] == "tiny"
    assert on_disk["test"]["accuracy"] == result["test"]["accuracy"] and on_disk["train"]["seconds"] == 60.0
    preds = pd.read_parquet(out / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    probs = test[[f"p_{c}" for c in CLASS_NAMES]].to_numpy()
    assert len(test) == 20 and on_disk["test"]["accuracy"] == pytest.approx((probs.argmax(1) == test["label"]).mean())
    assert on_disk["test"]["subgroups"]["scanner"]["groups"][0]["value"] == "HOWTEK"
    audit = on_disk["shortcut_audit"]
    assert audit["available"] and audit["model_macro_auc"] == on_disk["test"]["macro_auc"]
    assert set(audit["features"]) == {"crop_side_px", "scanner", "bits_stored", "image_source"}
    assert "padding_fraction" in audit["missing_features"]
    page = (out / "report.html").read_text()
    assert "<svg" in page and "Shortcut audit" in page
    # Grad-CAM overlays: a sample of test patches per class, embedded as PNG data
    assert on_disk["explanations"]["gradcam"]["available"] and page.count("alt=\"Grad-CAM of") >= 5
    # heatmaps of full test images (ingest's cases point at them), with the ROI outline
    heatmaps = on_disk["explanations"]["heatmaps"]
    assert heatmaps["available"] and len(heatmaps["images"]) == 5 and "Heatmaps of full test images" in page
    assert set(heatmaps["localisation"]) == set(CLASS_NAMES) - {"normal"}
    # the run summary carries the audit beside the model's AUC under a key naming the shortcut
    from mammo.pipelines.local_run import build_summary

    summary = build_summary(tmp_path, cfg)["backbones"]["tiny"]
    assert summary["shortcut_audit"]["macro_auc"] == audit["macro_auc"]
    assert summary["shortcut_audit"]["model_macro_auc"] == summary["test"]["macro_auc"]


def test_evaluate_component_body_logs_kfp_metrics_confusion_matrix_and_roc(tmp_path):
    """The KFP component's Python body, called directly with real artifact objects (no KFP runtime)."""
    from kfp import dsl

    from mammo.components.config import load_config
    from mammo.components.evaluate.component import evaluate

    model_dir, dataset = _tiny_model_and_dataset(tmp_path)

    def artifact(cls, path):
        a = cls(name=path.name, uri=str(path))
        a.path = str(path)
        return a

    outs = {k: artifact(cls, tmp_path / k) for k, cls in (("evaluation", dsl.Artifact), ("metrics", dsl.Metrics),
                                                          ("classification", dsl.ClassificationMetrics),
                                                          ("report", dsl.HTML))}
    config = load_config("demo", overrides=["evaluate.bootstrap_resamples=20"]).to_dict()
    evaluate.python_func(model=artifact(dsl.Model, model_dir), dataset=artifact(dsl.Dataset, dataset),
                            backbone="tiny", config=config, **outs)
    record = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    logged = outs["metrics"].metadata
    assert logged["test_macro_auc"] == record["test"]["macro_auc"]
    assert logged["test_macro_auc_ci_low"] <= logged["test_macro_auc_ci_high"]
    assert "test_normal_sensitivity_at_specificity_90" in logged and "temperature" in logged
    cm = outs["classification"].metadata["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == list(CLASS_NAMES)
    assert [r["row"] for r in cm["rows"]] == record["test"]["confusion_matrix"]
    roc = outs["classification"].metadata["confidenceMetrics"]
    assert len(roc) == len(record["test"]["micro_roc"]["fpr"]) and roc[-1]["recall"] == 1.0
    assert "Evaluation of tiny" in (tmp_path / "report").read_text()
