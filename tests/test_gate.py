"""The promotion gate's decision table (selection on validation, gate on test)."""

from mammo.components.config import GateConfig
from mammo.components.gate.logic import decide, select_best


def ev(name, val_auc, val_acc, test_auc):
    return {"backbone": name, "validation": {"macro_auc": val_auc, "accuracy": val_acc},
            "test": {"macro_auc": test_auc, "accuracy": 0.5}}


CFG = GateConfig(metric="macro_auc", auc_threshold=0.9, max_auc_drop=0.01)


def test_select_uses_validation_auc_then_accuracy():
    best = select_best([ev("a", 0.91, 0.6, 0.99), ev("b", 0.93, 0.5, 0.80), ev("c", 0.93, 0.7, 0.85)])
    assert best["backbone"] == "c"  # test AUC never decides


def test_push_when_above_threshold_and_no_champion():
    d = decide([ev("a", 0.95, 0.7, 0.93)], None, CFG)
    assert d.promoted and d.selected_backbone == "a" and d.champion_value is None
    assert "no champion" in d.reason


def test_no_push_when_below_threshold():
    d = decide([ev("a", 0.95, 0.7, 0.89)], None, CFG)
    assert not d.promoted and "< threshold" in d.reason


def test_no_push_when_worse_than_champion():
    d = decide([ev("a", 0.95, 0.7, 0.92)], {"test_metrics": {"macro_auc": 0.95}, "version": 3}, CFG)
    assert not d.promoted and "champion" in d.reason and d.champion_value == 0.95 and d.champion_version == 3


def test_push_when_slightly_worse_than_champion_within_allowed_drop():
    d = decide([ev("a", 0.95, 0.7, 0.945)], {"test_metrics": {"macro_auc": 0.95}}, CFG)
    assert d.promoted


def test_no_push_when_metric_undefined():
    d = decide([ev("a", 0.95, 0.7, float("nan"))], None, CFG)
    assert not d.promoted and "undefined" in d.reason
