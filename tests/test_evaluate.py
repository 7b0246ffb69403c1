"""Evaluation metrics against scikit-learn / hand-computed values; intervals; calibration; subgroups."""

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mammo.components.config import CLASS_NAMES, EvaluateConfig
from mammo.components.evaluate.logic import (
    apply_temperature,
    bootstrap_ci,
    brier_score,
    compute_metrics,
    evaluate_predictions,
    expected_calibration_error,
    fit_temperature,
    rank_auc,
    sample_attributes,
    sensitivity_at_specificity,
    subgroup_metrics,
    weighted_aucs,
)
from mammo.components.evaluate.report import render_html


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fixed_predictions(n=400, seed=0, signal=1.2):
    """Reproducible 5-class predictions of moderate quality (every class present)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    z = rng.normal(size=(n, 5))
    z[np.arange(n), y] += signal
    return y, softmax(z)


# -- the paper's metrics ------------------------------------------------------------------------


def test_perfect_predictions_give_auc_one_and_identity_confusion():
    y = np.repeat(np.arange(5), 4)
    probs = np.eye(5)[y] * 0.9 + 0.02
    m = compute_metrics(y, probs)
    assert m.accuracy == 1.0 and m.macro_auc == 1.0
    assert m.confusion_matrix == (np.eye(5, dtype=int) * 4).tolist()
    for pc in m.per_class.values():
        assert pc["sensitivity"] == pc["specificity"] == pc["f1"] == 1.0


def test_sensitivity_specificity_from_a_known_confusion():
    # class 0: 3 true, 2 found; one class-1 sample predicted as 0
    y = np.array([0, 0, 0, 1, 1, 2, 3, 4])
    pred = np.array([0, 0, 1, 0, 1, 2, 3, 4])
    probs = np.full((8, 5), 0.01)
    probs[np.arange(8), pred] = 0.96
    m = compute_metrics(y, probs)
    c0 = m.per_class[CLASS_NAMES[0]]
    assert c0["sensitivity"] == pytest.approx(2 / 3)
    assert c0["specificity"] == pytest.approx(4 / 5)
    assert c0["precision"] == pytest.approx(2 / 3)
    assert c0["f1"] == pytest.approx(2 / 3)  # 2PR/(P+R) with P = R = 2/3
    assert m.accuracy == pytest.approx(6 / 8)
    assert m.confusion_matrix[1][0] == 1 and m.confusion_matrix[0][1] == 1


def test_every_metric_matches_sklearn_on_fixed_predictions():
    y, probs = fixed_predictions()
    pred = probs.argmax(axis=1)
    m = compute_metrics(y, probs)
    labels = list(range(5))
    assert m.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    assert m.confusion_matrix == skm.confusion_matrix(y, pred, labels=labels).tolist()
    assert m.macro_auc == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    recall = skm.recall_score(y, pred, labels=labels, average=None)
    precision = skm.precision_score(y, pred, labels=labels, average=None)
    f1 = skm.f1_score(y, pred, labels=labels, average=None)
    for i, name in enumerate(CLASS_NAMES):
        pc = m.per_class[name]
        (tn, fp), (_fn, _tp) = skm.multilabel_confusion_matrix(y, pred, labels=labels)[i]
        assert pc["sensitivity"] == pytest.approx(recall[i])
        assert pc["specificity"] == pytest.approx(tn / (tn + fp))
        assert pc["precision"] == pytest.approx(precision[i])
        assert pc["f1"] == pytest.approx(f1[i])
        assert pc["auc"] == pytest.approx(skm.roc_auc_score(y == i, probs[:, i]))
    assert m.macro_f1 == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m.nll == pytest.approx(skm.log_loss(y, probs, labels=labels))


def test_random_scores_give_auc_near_half():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 2000)
    m = compute_metrics(y, rng.dirichlet(np.ones(5), 2000))
    assert 0.45 < m.macro_auc < 0.55


def test_rank_and_weighted_auc_equal_sklearn_with_ties_and_repeats():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 300) / 5.0  # many ties
    positive = rng.random(300) < 0.3
    assert rank_auc(positive, scores) == pytest.approx(skm.roc_auc_score(positive, scores))
    weights = rng.integers(0, 3, (3, 300)).astype(float)
    for row, w in zip(weighted_aucs(positive, scores, weights), weights):
        idx = np.repeat(np.arange(300), w.astype(int))
        assert row == pytest.approx(skm.roc_auc_score(positive[idx], scores[idx]))
    assert np.isnan(rank_auc(np.zeros(5, bool), np.arange(5.0)))


def test_sensitivity_at_fixed_specificity_hand_computed():
    negatives = np.arange(10) / 10 + 0.05  # 0.05 ... 0.95
    positives = np.array([0.99, 0.9, 0.8, 0.2])
    scores = np.r_[negatives, positives]
    is_pos = np.r_[np.zeros(10, bool), np.ones(4, bool)]
    # specificity >= 0.90 allows one negative above the threshold (0.95): threshold 0.9 catches 0.99, 0.9
    at90 = sensitivity_at_specificity(is_pos, scores, 0.90)
    assert at90 == {"sensitivity": 0.5, "specificity": pytest.approx(0.9), "threshold": 0.9}
    # specificity >= 0.95 allows no negative: only 0.99 is above the threshold
    at95 = sensitivity_at_specificity(is_pos, scores, 0.95)
    assert at95["sensitivity"] == 0.25 and at95["specificity"] == 1.0 and at95["threshold"] == 0.99


def test_sensitivity_at_specificity_matches_a_brute_force_search():
    y, probs = fixed_predictions(n=250, seed=4)
    m = compute_metrics(y, probs, specificities=(0.8, 0.9, 0.95))
    for i, name in enumerate(CLASS_NAMES):
        pos, s = y == i, probs[:, i]
        for spec in (0.8, 0.9, 0.95):
            best = max([((s[pos] >= t).mean()) for t in np.r_[s, np.inf] if (s[~pos] < t).mean() >= spec - 1e-12])
            assert m.per_class[name]["sensitivity_at_specificity"][f"{spec:.2f}"]["sensitivity"] == pytest.approx(best)


# -- calibration --------------------------------------------------------------------------------


def test_expected_calibration_error_hand_computed():
    # top-class confidences 0.85, 0.85 (one right) and 0.55, 0.55 (both right), 10 bins:
    # bin (0.8, 0.9]: |0.5 - 0.85| * 2/4; bin (0.5, 0.6]: |1.0 - 0.55| * 2/4  ->  0.175 + 0.225 = 0.4
    probs = np.array([[0.85, 0.05, 0.05, 0.03, 0.02], [0.85, 0.05, 0.05, 0.03, 0.02],
                      [0.55, 0.2, 0.1, 0.1, 0.05], [0.1, 0.55, 0.2, 0.1, 0.05]])
    y = np.array([0, 1, 0, 1])
    ece, bins = expected_calibration_error(y, probs, n_bins=10)
    assert ece == pytest.approx(0.4)
    assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 1.0), (2, 0.5)]
    assert bins[1]["confidence"] == pytest.approx(0.85) and bins[0]["low"] == pytest.approx(0.5)


def test_brier_score_hand_computed():
    probs = np.array([[0.6, 0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    # (0.4^2 + 4 * 0.1^2) = 0.2 ; (0.8^2 + 4 * 0.2^2) = 0.8  ->  mean 0.5
    assert brier_score(np.array([0, 1]), probs) == pytest.approx(0.5)


def test_temperature_scaling_recovers_overconfidence_and_keeps_accuracy():
    rng = np.random.default_rng(1)
    n = 3000
    true_logits = rng.normal(size=(n, 5)) * 1.5
    p_true = softmax(true_logits)
    y = np.array([rng.choice(5, p=row) for row in p_true])  # labels drawn from the calibrated model
    overconfident = softmax(3.0 * true_logits)  # the model's logits are 3x too large
    t = fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    scaled = apply_temperature(overconfident, t)
    assert (scaled.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    assert expected_calibration_error(y, scaled)[0] < 0.5 * expected_calibration_error(y, overconfident)[0]


# -- uncertainty --------------------------------------------------------------------------------


def _clustered(rng, n_patients, per_patient=3):
    """Patches of one patient share most of their scores (as the CC/MLO patches of one lesion do)."""
    yp = rng.integers(0, 5, n_patients)
    v = rng.normal(0, 1, (n_patients, 5))
    v[np.arange(n_patients), yp] += 1.2
    z = np.repeat(v, per_patient, axis=0) + rng.normal(0, 0.35, (n_patients * per_patient, 5))
    return np.repeat(yp, per_patient), softmax(z), np.repeat(np.arange(n_patients), per_patient)


def test_patient_bootstrap_interval_covers_the_true_value_at_the_nominal_rate():
    rng = np.random.default_rng(7)
    y, p, _ = _clustered(rng, 60000)  # the population: its accuracy and macro AUC are the true values
    true_acc = (p.argmax(axis=1) == y).mean()
    true_auc = np.mean([rank_auc(y == i, p[:, i]) for i in range(5)])
    trials, hits, patch_level_hits = 300, np.zeros(2), 0
    for _ in range(trials):
        y, p, patients = _clustered(rng, 150)
        ci = bootstrap_ci(y, p, patients, n_resamples=200, seed=int(rng.integers(1 << 30)))
        hits += [ci["accuracy"][0] <= true_acc <= ci["accuracy"][1],
                 ci["macro_auc"][0] <= true_auc <= ci["macro_auc"][1]]
        naive = bootstrap_ci(y, p, np.arange(len(y)), n_resamples=200, seed=int(rng.integers(1 << 30)))
        patch_level_hits += naive["accuracy"][0] <= true_acc <= naive["accuracy"][1]
    coverage = hits / trials
    assert 0.895 <= coverage[0] <= 0.99 and 0.895 <= coverage[1] <= 0.99, coverage  # nominal 0.95
    # resampling patches as if independent gives intervals that are too narrow on clustered data
    assert patch_level_hits / trials < 0.87


def test_bootstrap_is_reproducible_with_its_seed_and_brackets_the_estimate():
    y, probs = fixed_predictions(n=200)
    patients = np.arange(200) // 2
    a = bootstrap_ci(y, probs, patients, n_resamples=300, seed=11)
    assert a == bootstrap_ci(y, probs, patients, n_resamples=300, seed=11)
    assert a != bootstrap_ci(y, probs, patients, n_resamples=300, seed=12)
    m = compute_metrics(y, probs)
    assert a["accuracy"][0] < m.accuracy < a["accuracy"][1]
    assert a["macro_auc"][0] < m.macro_auc < a["macro_auc"][1]
    assert a["n_patients"] == 100 and a["n_resamples"] == 300
    assert bootstrap_ci(y, probs, patients, n_resamples=0) == {}


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
    assert result["calibration"]["temperature"] > 0
    assert set(result["test"]["subgroups"]) == {"abnormality_type", "source", "scanner", "breast_density", "view"}
    json.dumps(result)  # the record is plain JSON
    page = render_html({"backbone": "resnet50", **result})
    assert page.index("macro AUC") < page.index("Per class")  # headline numbers first
    assert "Reliability" in page and "By scanner" in page and "breast density" in page and "MM (mass_malignant)" in page
    assert "patient-level percentile bootstrap" in page


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
            rows.append({"patch_id": meta["patch_id"], "scanner": "HOWTEK"})
        write_records(tmp_path / f"{split}.tfrecord", recs)
    pd.DataFrame(rows).to_parquet(tmp_path / "splits.parquet")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(5, activation="softmax")])
    (tmp_path / "model").mkdir()
    model.save(tmp_path / "model" / "model.keras")
    (tmp_path / "model" / "report.json").write_text(json.dumps({"step": "train", "backbone": "tiny", "seconds": 60.0}))
    return tmp_path / "model", tmp_path


def test_evaluate_model_on_tfrecords_writes_consistent_outputs(tmp_path):
    """The real step: a tiny Keras model over real TFRecords (no mocks), outputs read back."""
    from mammo.components.evaluate.logic import evaluate_model

    model_dir, dataset = _tiny_model_and_dataset(tmp_path)
    out = tmp_path / "eval"
    result = evaluate_model(model_dir / "model.keras", dataset, out, "tiny", {"seconds": 60.0},
                            EvaluateConfig(bootstrap_resamples=20), seed=1)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"]["accuracy"] == result["test"]["accuracy"] and on_disk["train"]["seconds"] == 60.0
    preds = pd.read_parquet(out / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    probs = test[[f"p_{c}" for c in CLASS_NAMES]].to_numpy()
    assert len(test) == 20 and on_disk["test"]["accuracy"] == pytest.approx((probs.argmax(1) == test["label"]).mean())
    assert on_disk["test"]["subgroups"]["scanner"]["groups"][0]["value"] == "HOWTEK"
    assert "<svg" in (out / "report.html").read_text()


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
