"""The evaluation's numbers against scikit-learn / hand-computed values; intervals; calibration."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mammo.components.config import CLASS_NAMES
from mammo.components.evaluate.metrics import (
    apply_temperature,
    bootstrap_ci,
    brier_score,
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
    paired_bootstrap_difference,
    rank_auc,
    sensitivity_at_specificity,
    weighted_aucs,
)


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


@pytest.mark.slow
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
    assert a["macro_f1"][0] < m.macro_f1 < a["macro_f1"][1]
    for rate in ("sensitivity", "specificity", "f1", "auc"):
        for name, stats in m.per_class.items():
            low, high = a[f"per_class_{rate}"][name]
            assert low <= stats[rate] <= high, (rate, name)


def test_resampled_rates_with_unit_weights_are_the_point_metrics():
    from mammo.components.evaluate.metrics import _resampled_rates

    y, probs = fixed_predictions(n=120, seed=5)
    y[y == 4] = 3  # class 4 absent: its sensitivity is 0/0, its F1 0 as in compute_metrics
    rates = _resampled_rates(y, probs.argmax(axis=1), np.ones((1, len(y))), len(CLASS_NAMES))
    m = compute_metrics(y, probs)
    for i, name in enumerate(CLASS_NAMES):
        for rate in ("sensitivity", "specificity", "f1"):
            np.testing.assert_allclose(rates[rate][0, i], m.per_class[name][rate], equal_nan=True, err_msg=f"{rate} {name}")


def test_undefined_class_auc_is_said_not_silently_averaged():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # no normal patch in this split
    probs = np.full((8, 5), 0.1)
    probs[np.arange(8), y] = 0.6
    m = compute_metrics(y, probs)
    assert np.isnan(m.per_class["normal"]["auc"])
    assert m.per_class["normal"]["auc_undefined"] == "AUC of normal undefined: no normal patch in this split"
    assert m.undefined_auc == ["AUC of normal undefined: no normal patch in this split"]
    assert m.macro_auc == 1.0  # the mean of the four defined AUCs
    assert "auc_undefined" not in m.per_class["calc_benign"]


def test_predicted_fraction_shows_a_collapsed_model():
    y = np.arange(50) % 5
    probs = np.tile([0.05, 0.05, 0.05, 0.05, 0.8], (50, 1))
    assert compute_metrics(y, probs).predicted_fraction["normal"] == 1.0


def test_paired_difference_is_narrower_than_the_two_separate_intervals():
    """Two models sharing most of their errors: the difference is certain although each AUC is not."""
    rng = np.random.default_rng(5)
    n_patients = 120
    patients = np.repeat(np.arange(n_patients), 2)
    y = np.repeat(rng.integers(0, 5, n_patients), 2)
    z = rng.normal(size=(len(y), 5))
    z[np.arange(len(y)), y] += 1.0
    a = softmax(z + np.eye(5)[y] * 0.15)  # a: the same scores, a little more signal
    b = softmax(z)
    d = paired_bootstrap_difference(y, a, b, patients, n_resamples=400, seed=3)
    assert d["difference"] == pytest.approx(d["a"] - d["b"]) and d["difference"] > 0
    assert d["interval"][0] > 0  # the paired interval excludes 0
    ci_a, ci_b = (bootstrap_ci(y, p, patients, n_resamples=400, seed=3)["macro_auc"] for p in (a, b))
    assert ci_a[0] < ci_b[1]  # the separate intervals overlap
    assert d["a"] == pytest.approx(skm.roc_auc_score(y, a, multi_class="ovr"))
    assert paired_bootstrap_difference(y, a, b, patients, n_resamples=400, seed=3) == d  # seeded
    acc = paired_bootstrap_difference(y, a, b, patients, metric="accuracy", n_resamples=100, seed=3)
    assert acc["difference"] == pytest.approx((a.argmax(1) == y).mean() - (b.argmax(1) == y).mean())
    with pytest.raises(ValueError, match="same patches"):
        paired_bootstrap_difference(y, a[:-1], b, patients)
