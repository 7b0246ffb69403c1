import numpy as np
import pytest

from mammo.components.config import CLASS_NAMES
from mammo.components.evaluate.logic import compute_metrics, render_html


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
    assert m.accuracy == pytest.approx(6 / 8)
    assert m.confusion_matrix[1][0] == 1 and m.confusion_matrix[0][1] == 1


def test_random_scores_give_auc_near_half():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 2000)
    m = compute_metrics(y, rng.dirichlet(np.ones(5), 2000))
    assert 0.45 < m.macro_auc < 0.55


def test_html_report_has_tables_and_roc():
    y = np.repeat(np.arange(5), 3)
    m = compute_metrics(y, np.eye(5)[y])
    from dataclasses import asdict
    page = render_html({"backbone": "x", "validation": asdict(m), "test": asdict(m)})
    assert "Confusion matrix" in page and "<polyline" in page and "mass_malignant" in page
