"""Deploy, model card: sections, the evaluation record's own intervals first, analytic intervals for the rest."""

from __future__ import annotations

from typing import Any

import pytest

from mammo.components.config import CLASS_NAMES
from mammo.components.deploy.model_card import auc_standard_error, render_model_card, wilson_interval

DESCRIPTION = {"backbone": "tiny", "class_names": list(CLASS_NAMES), "image_size": 16, "patch_mm": 30.0,
               "pixel_spacing_mm": 0.05}


def _split(n: int, accuracy: float, macro_auc: float, support: int, **extra: Any) -> dict[str, Any]:
    per_class = {c: {"support": support, "auc": macro_auc, "sensitivity": accuracy, "specificity": 0.9, "f1": 0.6}
                 for c in CLASS_NAMES}
    return {"n": n, "accuracy": accuracy, "macro_auc": macro_auc, "macro_f1": 0.6, "per_class": per_class, **extra}


EVALUATION = {"backbone": "tiny", "validation": _split(40, 0.7, 0.85, 8), "test": _split(50, 0.72, 0.81, 10)}


def test_model_card_has_data_splits_metrics_with_intervals_use_and_limitations() -> None:
    card = render_model_card("mammo", DESCRIPTION, EVALUATION)
    for heading in ("# Model card: mammo", "## Data", "## Splits", "## Metrics (with confidence intervals; 95 % unless stated)",
                    "## Intended use", "## Limitations"):
        assert heading in card
    assert "| test | 50 | 10 | 10 | 10 | 10 | 10 |" in card
    low, high = wilson_interval(0.72, 50)
    assert f"0.7200 [{low:.4f}, {high:.4f}]" in card  # test accuracy with its Wilson interval
    assert "not a medical device" in card.replace("**", "")
    assert "30.0 mm at 0.05 mm per pixel" in card and "mammo predict --heatmap" in card


def test_model_card_prefers_the_evaluation_records_own_intervals() -> None:
    ci = {"macro_auc": {"low": 0.75, "high": 0.86}, "per_class_auc": {"normal": [0.7, 0.9]},
          "method": "patient bootstrap", "level": 0.9}
    evaluation = {"test": _split(50, 0.72, 0.81, 10, ci=ci, accuracy_ci=[0.6, 0.8])}
    card = render_model_card("mammo", DESCRIPTION, evaluation)
    assert "| test | 0.7200 [0.6000, 0.8000] | 0.8100 [0.7500, 0.8600] | 0.6000 |" in card
    assert "test: accuracy from the evaluation record, macro_auc patient bootstrap, level 0.9, macro_f1 not computed" in card
    normal_row = next(line for line in card.splitlines() if line.startswith("| normal |"))
    assert normal_row.endswith("| 0.8100 [0.7000, 0.9000] |")


def test_model_card_without_an_evaluation_says_so() -> None:
    card = render_model_card("mammo", {**DESCRIPTION, "test_metrics": {"macro_auc": 0.8}}, None)
    assert "No evaluation record was stored with this version." in card
    assert 'no intervals available): {"macro_auc": 0.8}' in card


def test_interval_formulas_give_hand_computed_values() -> None:
    # Wilson, 8 of 10: centre (0.8 + z²/20) / (1 + z²/10), half-width z·sqrt(0.016 + z²/400) / (1 + z²/10)
    low, high = wilson_interval(0.8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # Hanley-McNeil, AUC 0.8 on 50 + 50: Q1 = 0.8/1.2, Q2 = 1.28/1.8,
    # var = (0.16 + 49 (Q1 - 0.64) + 49 (Q2 - 0.64)) / 2500 -> SE 0.0445
    assert auc_standard_error(0.8, 50, 50) == pytest.approx(0.0445, abs=1e-4)
    assert auc_standard_error(0.8, 500, 500) < auc_standard_error(0.8, 50, 50)
    assert wilson_interval(float("nan"), 10) is None and auc_standard_error(0.9, 0, 10) is None


def test_model_card_shows_the_shortcut_audit_and_the_champion_comparison() -> None:
    description = {
        "backbone": "tiny", "class_names": list(CLASS_NAMES),
        "gate": {"reason": "promoted", "champion_comparison": {"challenger_auc": 0.91, "champion_auc": 0.88,
                                                               "difference": 0.03, "interval": [-0.01, 0.07]}},
        "shortcut_audit": {"available": True, "macro_auc": 0.52, "model_macro_auc": 0.91,
                           "model_minus_shortcut": 0.39, "features": ["crop_mm", "padding_fraction"]},
    }
    card = render_model_card("mammo", description, None)
    assert "metadata-only baseline (crop_mm, padding_fraction) reaches macro AUC 0.5200" in card
    assert "difference 0.3900" in card
    assert "Against the champion on this test set:" in card and "[-0.0100, 0.0700]" in card
    off = render_model_card("mammo", {**description, "shortcut_audit": {"available": False, "note": "no features"}}, None)
    assert "Shortcut audit (metadata-only baseline): not available (no features)" in off
