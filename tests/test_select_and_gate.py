"""The promotion gate's decision table (selection on validation, gate on test)."""

import json

import pytest

from mammo.components.config import CLASS_NAMES, GateConfig, load_config
from mammo.components.select_and_gate.logic import decide, model_metadata, select_best, write_calibration
from mammo.components.select_and_gate.report import render_gate_html


def ev(name, val_auc, val_acc, test_auc, class_aucs=None, ci=None, predicted=None):
    """An evaluation record; ``predicted``: how many of 100 test patches land in each class (balanced)."""
    predicted = predicted or [20] * 5
    cm = [[0] * 5 for _ in range(5)]
    for j, count in enumerate(predicted):
        for k in range(count):
            cm[k % 5][j] += 1
    per_class = {c: {"auc": (class_aucs or {}).get(c, test_auc), "sensitivity": 0.7, "specificity": 0.9, "f1": 0.7,
                     "sensitivity_at_specificity": {"0.90": {"sensitivity": 0.6}}} for c in CLASS_NAMES}
    return {"backbone": name, "validation": {"macro_auc": val_auc, "accuracy": val_acc, "macro_f1": 0.5},
            "test": {"macro_auc": test_auc, "accuracy": 0.5, "macro_f1": 0.5, "per_class": per_class,
                     "ci": ci or {}, "confusion_matrix": cm},
            "train": {"seconds": 120.0}}


def full_ev(name, val_auc, val_acc, test_auc):
    """A complete evaluation record (evaluate's own code on fixed predictions), headline values set."""
    import numpy as np
    import pandas as pd

    from mammo.components.config import EvaluateConfig
    from mammo.components.evaluate.logic import evaluate_predictions

    rng = np.random.default_rng(0)
    y = np.arange(60) % 5
    z = rng.normal(size=(60, 5))
    z[np.arange(60), y] += 2
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    rec = pd.DataFrame({"patch_id": [f"p{i}" for i in range(60)], "case_id": "c", "source": "cbis-ddsm",
                        "patient_id": [f"P{i // 2}" for i in range(60)], "label": y})
    e = evaluate_predictions({"validation": (y, probs, rec), "test": (y, probs, rec)},
                             EvaluateConfig(bootstrap_resamples=20), seed=0)
    e["validation"].update(macro_auc=val_auc, accuracy=val_acc)
    e["test"]["macro_auc"] = test_auc
    return {"backbone": name, **e, "train": {"seconds": 120.0}}


CFG = GateConfig(metric="macro_auc", auc_threshold=0.9, max_auc_drop=0.01)


def champion(auc, version=3):
    return {"test_metrics": {"macro_auc": auc}, "version": version, "backbone": "xception"}


def test_select_uses_validation_auc_then_accuracy():
    best = select_best([ev("a", 0.91, 0.6, 0.99), ev("b", 0.93, 0.5, 0.80), ev("c", 0.93, 0.7, 0.85)])
    assert best["backbone"] == "c"  # test AUC never decides


def test_push_when_above_threshold_and_no_champion():
    d = decide([ev("a", 0.95, 0.7, 0.93)], None, CFG)
    assert d.promoted and d.selected_backbone == "a" and d.champion_value is None
    assert "no champion" in d.reason and ">= threshold 0.9000" in d.reason
    assert [c["passed"] for c in d.checks] == [True, True]  # first run: the absolute checks only


def test_no_push_when_below_threshold_on_first_run():
    d = decide([ev("a", 0.95, 0.7, 0.89)], None, CFG)
    assert not d.promoted and not d.would_promote and "< threshold" in d.reason


# -- the champion's recorded figure (the fallback when it cannot be re-scored) ---------------------

UNSCORED = {"available": False, "reason": "champion v3 could not be loaded from /x/3: OSError: no saved_model.pb"}


def test_push_when_better_than_champion():
    d = decide([ev("a", 0.95, 0.7, 0.96)], champion(0.95), CFG, UNSCORED)
    assert d.promoted and d.champion_value == 0.95 and d.champion_version == 3
    assert "the champion's recorded 0.9500" in d.reason and len(d.checks) == 3
    assert any(n.startswith("champion v3 could not be loaded") and "recorded test macro_auc 0.9500 instead" in n
               for n in d.notes)  # the fallback says so


def test_no_push_when_worse_than_champion_beyond_tolerance():
    d = decide([ev("a", 0.95, 0.7, 0.92)], champion(0.95), CFG, UNSCORED)
    assert not d.promoted and "champion" in d.reason and d.champion_value == 0.95 and d.champion_version == 3
    assert [c["passed"] for c in d.checks] == [True, True, False]  # above the threshold, but worse than the champion


def test_push_when_slightly_worse_than_champion_within_allowed_drop():
    d = decide([ev("a", 0.95, 0.7, 0.945)], champion(0.95), CFG, UNSCORED)
    assert d.promoted and "within 0.0100" in d.reason


# -- the champion re-scored on this test set: the paired interval decides -------------------------


def paired(challenger, champ, low, high):
    return {"available": True, "champion_version": 3, "metric": "macro_auc", "challenger": challenger,
            "champion": champ, "difference": challenger - champ, "interval": [low, high], "level": 0.95,
            "method": "paired patient-level percentile bootstrap", "n": 600, "n_patients": 300, "n_resamples": 1000,
            "seed": 0}


def test_paired_comparison_on_todays_data_replaces_the_recorded_figure():
    # recorded 0.99 on its own test set; on today's, the champion scores 0.91 and the challenger 0.95
    d = decide([ev("a", 0.95, 0.7, 0.95)], champion(0.99), CFG, paired(0.95, 0.91, 0.02, 0.06))
    assert d.promoted and d.champion_value == 0.91
    assert "vs champion v3 0.9100: difference +0.0400" in d.reason and "[+0.0200, +0.0600]" in d.reason
    assert d.champion_comparison["interval"] == [0.02, 0.06]


def test_within_noise_a_slightly_lower_point_estimate_is_promoted_when_the_interval_allows():
    # the point estimate is 0.005 below the champion; the lower bound -0.008 is above -max_auc_drop
    d = decide([ev("a", 0.95, 0.7, 0.945)], champion(0.95), CFG, paired(0.945, 0.95, -0.008, 0.003))
    assert d.promoted and "lower bound above -max_auc_drop" in d.reason


def test_a_point_estimate_within_the_drop_is_refused_when_the_interval_reaches_below_it():
    # the recorded-figure rule would promote (0.945 >= 0.95 - 0.01); the paired interval does not
    d = decide([ev("a", 0.95, 0.7, 0.945)], champion(0.95), CFG, paired(0.945, 0.95, -0.03, 0.02))
    assert not d.promoted and "not above -max_auc_drop -0.0100" in d.reason
    assert decide([ev("a", 0.95, 0.7, 0.945)], champion(0.95), CFG, UNSCORED).promoted


# -- degenerate models ---------------------------------------------------------------------------


def test_no_push_when_the_model_collapsed_to_one_class():
    d = decide([ev("a", 0.95, 0.7, 0.93, predicted=[1, 1, 1, 1, 96])], None, CFG)
    assert not d.promoted
    assert d.reason == "the model collapsed: it predicts normal for 96.0% of the test patches (more than 95%)"
    assert decide([ev("a", 0.95, 0.7, 0.93, predicted=[2, 1, 1, 1, 95])], None, CFG).promoted  # 95% is allowed


def test_undefined_class_auc_is_noted_and_fails_its_floor_with_the_reason():
    e = ev("a", 0.95, 0.7, 0.93)
    e["test"]["per_class"]["normal"].update(auc=float("nan"), auc_undefined="AUC of normal undefined: no normal "
                                                                             "patch in this split")
    e["test"]["undefined_auc"] = ["AUC of normal undefined: no normal patch in this split"]
    d = decide([e], None, GateConfig(auc_threshold=0.9, class_auc_floors=["normal:0.8"]))
    assert not d.promoted and "no normal patch in this split" in d.reason
    assert "AUC of normal undefined: no normal patch in this split" in d.notes


def test_shortcut_warning_when_the_model_is_not_clearly_above_the_metadata_baseline():
    e = ev("a", 0.95, 0.7, 0.93)
    e["shortcut_audit"] = {"available": True, "macro_auc": 0.91, "model_macro_auc": 0.93, "model_minus_shortcut": 0.02,
                           "features": {"crop_side_mm": "column 'crop_mm'"}}
    d = decide([e], None, CFG)
    assert d.promoted  # a warning, not a refusal
    warning = next(n for n in d.notes if n.startswith("WARNING shortcut"))
    assert "macro AUC 0.9100" in warning and "crop_side_mm" in warning
    page = render_gate_html(d.to_dict(), [full_ev("a", 0.95, 0.7, 0.93) | {"shortcut_audit": e["shortcut_audit"]}])
    assert "box warn\">WARNING shortcut" in page
    e["shortcut_audit"]["model_minus_shortcut"] = 0.2
    assert not any(n.startswith("WARNING") for n in decide([e], None, CFG).notes)
    assert model_metadata(d, e)["shortcut_audit"]["macro_auc"] == 0.91  # deploy's model card reads it


def test_no_push_when_a_class_auc_is_below_its_floor():
    cfg = GateConfig(auc_threshold=0.9, class_auc_floors=["all:0.85", "calc_malignant:0.9"])
    d = decide([ev("a", 0.95, 0.7, 0.95, class_aucs={"calc_malignant": 0.88})], None, cfg)
    assert not d.promoted
    assert d.reason == "test AUC of calc_malignant 0.8800 < floor 0.9000"
    assert d.class_floors["calc_malignant"] == 0.9 and d.class_floors["normal"] == 0.85
    assert sum(not c["passed"] for c in d.checks) == 1


def test_push_when_every_class_clears_its_floor():
    cfg = GateConfig(auc_threshold=0.9, class_auc_floors=["mass_malignant:0.9"])
    d = decide([ev("a", 0.95, 0.7, 0.95)], None, cfg)
    assert d.promoted and len(d.checks) == 3  # threshold, collapse, the floor


def test_unknown_class_floor_is_rejected_when_the_config_is_read():
    with pytest.raises(ValueError, match="mass_malign:0.9"):
        load_config("demo", overrides=["gate.class_auc_floors=mass_malign:0.9"])
    with pytest.raises(ValueError, match="class:floor"):
        GateConfig(class_auc_floors=["normal=0.9"])


def test_no_push_when_metric_undefined():
    d = decide([ev("a", 0.95, 0.7, float("nan"))], None, CFG)
    assert not d.promoted and "undefined" in d.reason


def test_forced_push_is_promoted_and_recorded_as_forced():
    cfg = GateConfig(auc_threshold=0.9, force=True)
    d = decide([ev("a", 0.95, 0.7, 0.80)], champion(0.95), cfg)
    assert d.promoted and d.forced and not d.would_promote
    assert d.reason.startswith("FORCED") and "< threshold" in d.reason
    meta = model_metadata(d, ev("a", 0.95, 0.7, 0.80))
    assert meta["gate"]["forced"] is True and meta["gate"]["would_promote"] is False


def test_champion_without_a_record_is_noted_and_only_the_threshold_applies():
    d = decide([ev("a", 0.95, 0.7, 0.93)], {"version": 7, "path": "/x/7"}, CFG, UNSCORED)
    assert d.promoted and d.champion_value is None and d.champion_version == 7
    assert any("version 7 has no recorded test macro_auc" in n for n in d.notes)


def test_interval_reaching_below_the_threshold_is_noted():
    d = decide([ev("a", 0.95, 0.7, 0.92, ci={"macro_auc": [0.88, 0.95], "level": 0.95})], None, CFG)
    assert d.promoted and d.value_ci == [0.88, 0.95]
    assert any("reaches below the threshold" in n for n in d.notes)


def test_model_metadata_keeps_the_champion_key_and_the_evidence():
    best = ev("a", 0.95, 0.7, 0.93, ci={"macro_auc": [0.9, 0.96], "accuracy": [0.4, 0.6], "level": 0.95,
                                        "per_class_auc": {c: [0.9, 0.96] for c in CLASS_NAMES}})
    best["calibration"] = {"temperature": 1.7, "test_ece_before": 0.12, "test_ece_after": 0.04,
                           "method": "temperature scaling"}
    d = decide([best], None, CFG)
    meta = model_metadata(d, best)
    assert meta["test_metrics"]["macro_auc"] == 0.93 and meta["test_metrics"]["macro_auc_ci"] == [0.9, 0.96]
    assert meta["test_metrics"]["per_class_auc"]["normal"] == 0.93
    assert meta["test_metrics"]["per_class"]["normal"]["sensitivity_at_specificity"] == {"0.90": 0.6}
    assert meta["calibration"]["temperature"] == 1.7 and meta["gate"]["promoted"] is True
    # what deploy stores is read back by the next gate as the champion
    again = decide([ev("b", 0.95, 0.7, 0.90)], {**meta, "version": 1}, CFG, UNSCORED)
    assert again.champion_value == 0.93 and not again.promoted
    json.dumps(meta)


def test_calibration_is_written_next_to_the_selected_model(tmp_path):
    assert write_calibration(tmp_path, ev("a", 0.9, 0.7, 0.9)) is None
    best = ev("a", 0.9, 0.7, 0.9)
    best["calibration"] = {"temperature": 1.5, "method": "m", "validation_nll_before": 1.0,
                           "validation_nll_after": 0.9, "test_ece_before": 0.1, "test_ece_after": 0.05,
                           "test_nll_before": 1.1, "test_nll_after": 1.0}
    path = write_calibration(tmp_path, best)
    assert json.loads(path.read_text())["temperature"] == 1.5


def test_gate_report_shows_the_decision_before_the_comparison_table():
    evals = [full_ev("a", 0.95, 0.7, 0.92), full_ev("b", 0.90, 0.8, 0.97)]
    d = decide(evals, champion(0.95), CFG, UNSCORED)
    page = render_gate_html(d.to_dict(), evals)
    assert page.index("NOT PROMOTED") < page.index("worse than the champion") < page.index("<h2>Backbones")
    assert "Not re-scored: champion v3 could not be loaded" in page
    assert "training time (min)" in page and "2.0" in page and "champion v3" in page
    assert page.count("&#10004;") == 1  # one selected row


def test_gate_component_body_writes_decision_report_and_calibration(tmp_path):
    """The KFP component's Python body, called directly with real artifact objects (no KFP runtime)."""
    from kfp import dsl

    from mammo.components.select_and_gate.component import select_and_gate

    def artifact(cls, name):
        a = cls(name=name, uri=str(tmp_path / name))
        a.path = str(tmp_path / name)  # a local artifact: path = uri
        return a

    evaluations, models = [], []
    for name, val_auc, test_auc in (("a", 0.95, 0.93), ("b", 0.90, 0.99)):
        e = full_ev(name, val_auc, 0.7, test_auc)
        (tmp_path / f"eval_{name}").mkdir()
        (tmp_path / f"eval_{name}" / "metrics.json").write_text(json.dumps(e))
        (tmp_path / f"model_{name}").mkdir()
        (tmp_path / f"model_{name}" / "report.json").write_text(json.dumps({"backbone": name}))
        evaluations.append(artifact(dsl.Artifact, f"eval_{name}"))
        models.append(artifact(dsl.Model, f"model_{name}"))
    outs = {k: artifact(cls, k) for k, cls in (("decision", dsl.Artifact), ("selected_model", dsl.Model),
                                               ("report", dsl.HTML), ("metrics", dsl.Metrics))}
    config = load_config("demo").to_dict()
    promoted = select_and_gate.python_func(evaluations=evaluations, models=models, config=config,
                                              serving_root=str(tmp_path / "serving"), **outs)
    assert promoted is True
    record = json.loads((tmp_path / "decision" / "report.json").read_text())
    assert record["selected_backbone"] == "a" and record["model_metadata"]["test_metrics"]["macro_auc"] == 0.93
    temperature = json.loads((tmp_path / "selected_model" / "calibration.json").read_text())["temperature"]
    assert temperature == record["evaluations"][0]["calibration"]["temperature"] > 0
    assert "<h1>Promotion gate: PROMOTED</h1>" in (tmp_path / "report").read_text()
    assert outs["metrics"].metadata["gate_promoted"] == 1.0
