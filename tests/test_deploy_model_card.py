"""Deploy, model card: sections, and every interval taken from the evaluation record (none computed here)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from mammo.components.config import CLASS_NAMES
from mammo.components.deploy.model_card import render_model_card
from mammo.components.evaluate.metrics import bootstrap_ci, compute_metrics

DESCRIPTION = {"backbone": "tiny", "class_names": list(CLASS_NAMES), "image_size": 16, "patch_mm": 30.0,
               "pixel_spacing_mm": 0.05}


def _split(n: int, seed: int, resamples: int = 200) -> dict:
    """A split as evaluate records it: compute_metrics' figures plus bootstrap_ci's intervals."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASS_NAMES)
    logits = rng.normal(size=(n, len(CLASS_NAMES))) + 1.5 * np.eye(len(CLASS_NAMES))[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    record = asdict(compute_metrics(y, probs))
    record["ci"] = bootstrap_ci(y, probs, [f"P_{i // 2}" for i in range(n)], n_resamples=resamples, seed=seed)
    return record


EVALUATION = {"backbone": "tiny", "validation": _split(40, 1), "test": _split(50, 2)}


def _cell(value: float, interval: list[float] | None = None) -> str:
    return f"{value:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def test_model_card_has_data_splits_metrics_with_intervals_use_and_limitations() -> None:
    card = render_model_card("mammo", DESCRIPTION, EVALUATION)
    for heading in ("# Model card: mammo", "## Data", "## Splits", "## Metrics", "## Intended use", "## Limitations"):
        assert heading in card
    assert "| test | 50 | 10 | 10 | 10 | 10 | 10 |" in card
    assert "not a medical device" in card.replace("**", "")
    assert "30.0 mm at 0.05 mm per pixel" in card and "mammo predict --heatmap" in card


def test_every_figure_of_the_card_carries_the_evaluation_records_own_interval() -> None:
    card = render_model_card("mammo", DESCRIPTION, EVALUATION)
    for split in ("validation", "test"):
        m = EVALUATION[split]
        row = " | ".join(_cell(m[k], m["ci"][k]) for k in ("accuracy", "macro_auc", "macro_f1"))
        assert f"| {split} | {row} |" in card
    test = EVALUATION["test"]
    for name, stats in test["per_class"].items():
        cells = [_cell(stats[k], test["ci"][f"per_class_{k}"][name]) for k in ("sensitivity", "specificity", "f1", "auc")]
        assert f"| {name} | " + " | ".join(cells) + " |" in card
    assert "test: 95 % patient-level percentile bootstrap interval, 200 resamples of 25 patients" in card
    assert "Wilson" not in card and "Hanley" not in card


def test_a_record_without_intervals_shows_the_figures_bare_and_says_why() -> None:
    evaluation = {"test": {**EVALUATION["test"], "ci": {}}}
    card = render_model_card("mammo", DESCRIPTION, evaluation)
    m = evaluation["test"]
    assert f"| test | {_cell(m['accuracy'])} | {_cell(m['macro_auc'])} | {_cell(m['macro_f1'])} |" in card
    assert "test: no intervals in the evaluation record (evaluate.bootstrap_resamples = 0)" in card


def test_model_card_without_an_evaluation_says_so() -> None:
    card = render_model_card("mammo", {**DESCRIPTION, "test_metrics": {"macro_auc": 0.8}}, None)
    assert "No evaluation record was stored with this version." in card
    assert 'no intervals available): {"macro_auc": 0.8}' in card


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
