"""The model card stored with every served version (``assets.extra``, Markdown).

Sections: model, data, splits, metrics with confidence intervals, intended use, limitations. Every
interval is the evaluation record's own (evaluate's patient-level bootstrap, ``<split>.ci``); the
card computes none, so it can never disagree with the evaluation report. A figure the record has no
interval for is shown without one, and the card says so.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from mammo.components.config import CLASS_NAMES
from mammo.components.deploy.export import DEFAULT_SIGNATURE, PIXELS_SIGNATURE

INTENDED_USE = """\
Research and engineering use: classifying 8-bit grayscale **patches** (regions of interest, not
whole mammograms) of screen-film mammograms into normal tissue, benign / malignant mass and benign /
malignant calcification, as in Tiryaki (2023). It is meant for reproducing and extending that study
and for exercising the serving stack. It is **not** a medical device, has not been validated
clinically, and must not be used for diagnosis, screening or triage of real patients."""

LIMITATIONS = """\
* Trained and tested on CBIS-DDSM (digitised screen-film mammograms, 1990s scanners) and DDSM
  normals; digital mammography, other populations and other scanners are out of distribution.
* The normal class comes from different scanners (DBA 16-bit, Howtek / Lumisys 12-bit) than the
  abnormal classes: part of what separates "normal" may be the scanner signature. Check the
  per-source results of the evaluation before trusting the normal class.
* The classes were balanced for training and testing: predicted probabilities do not reflect real
  prevalence (abnormalities are rare in screening), and positive predictive values will be far
  lower in practice.
* The input must be a patch centred on the finding, mapped to 8 bits with the fixed
  `value * 255 / (2**bits - 1)` mapping (`mammo predict` does this for PNG and DICOM). Whole
  mammograms sent as one image are resized to the patch size and give meaningless answers; scan
  them with `mammo predict --heatmap` (windows of the patch's physical size over the breast).
* CBIS-DDSM labels come from pathology of lesions that were recalled; "benign without callback"
  is counted as benign. Interval cancers and lesions missed by the original readers are absent."""


def _recorded_interval(split: Mapping[str, Any], key: str, name: str | None = None) -> tuple[float, float] | None:
    """The interval ``split["ci"][key]`` (or ``[key][name]`` for a per-class one), None if not recorded."""
    value = (split.get("ci") or {}).get(key)
    if name is not None:
        value = value.get(name) if isinstance(value, Mapping) else None
    if isinstance(value, (list, tuple)) and len(value) == 2 and \
            all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _interval_method(split_name: str, split: Mapping[str, Any]) -> str:
    ci = split.get("ci") or {}
    if not ci:
        return f"{split_name}: no intervals in the evaluation record (evaluate.bootstrap_resamples = 0)"
    return (f"{split_name}: {100 * float(ci.get('level', 0.95)):.0f} % {ci.get('method', 'bootstrap')} interval, "
            f"{ci.get('n_resamples', '?')} resamples of {ci.get('n_patients', '?')} patients")


def _fmt(value: Any, interval: tuple[float, float] | None = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{float(value):.4f}"
    return f"{text} [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else text


def _champion_lines(comparison: Any) -> list[str]:
    """The gate's paired comparison with the champion, re-scored on the same test set."""
    if not isinstance(comparison, Mapping) or not comparison:
        return []
    ci = comparison.get("interval")
    text = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in comparison.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool))
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f"; 95 % interval of the difference [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    return [f"* Against the champion on this test set: {text}"] if text else []


def _shortcut_lines(audit: Any) -> list[str]:
    """The metadata-only baseline (crop side, padding, scanner, bit depth, source) beside the model."""
    if not isinstance(audit, Mapping):
        return []
    if not audit.get("available"):
        return [f"* Shortcut audit (metadata-only baseline): not available ({audit.get('note') or 'no features'})"]
    return [f"* Shortcut audit: a metadata-only baseline ({', '.join(audit.get('features') or [])}) reaches "
            f"macro AUC {_fmt(audit.get('macro_auc'))}; the model {_fmt(audit.get('model_macro_auc'))} "
            f"(difference {_fmt(audit.get('model_minus_shortcut'))}). A small difference means the model may be "
            "reading the field of view or the scanner rather than the pathology."]


def render_model_card(model_name: str, description: Mapping[str, Any], evaluation: Mapping[str, Any] | None) -> str:
    """The model card (Markdown): model, data, splits, metrics with 95 % intervals, intended use, limitations."""
    evaluation = evaluation or {}
    lines = [f"# Model card: {model_name}", ""]
    lines += ["## Model", ""]
    lines.append(f"* Backbone: {description.get('backbone', 'unknown')}")
    lines.append(f"* Input: {description.get('image_size')} x {description.get('image_size')} 8-bit grayscale patch; "
                 f"signatures `{DEFAULT_SIGNATURE}` (PNG bytes) and `{PIXELS_SIGNATURE}` (uint8 pixels)")
    lines.append(f"* Classes (output order): {', '.join(description.get('class_names', []))}")
    lines.append(f"* Exported: {description.get('exported_at', 'unknown')}")
    if description.get("patch_mm"):
        lines.append(f"* Field of view of a patch: {description['patch_mm']} mm at "
                     f"{description.get('pixel_spacing_mm', '?')} mm per pixel (used by whole-image heatmaps)")
    gate = description.get("gate")
    if isinstance(gate, Mapping):
        lines.append(f"* Promotion gate: {gate.get('reason', '')}")
        lines += _champion_lines(gate.get("champion_comparison"))
    lines += _shortcut_lines(description.get("shortcut_audit"))
    lines.append("")

    lines += ["## Data", ""]
    data = description.get("data")
    if isinstance(data, Mapping) and data:
        for key, value in data.items():
            lines.append(f"* {key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    else:
        lines.append("* CBIS-DDSM (mass and calcification case descriptions, DICOM ROI patches) and DDSM "
                     "normal mammograms (normal-tissue patches); see the pipeline run's ingest and "
                     "balance reports for the exact counts.")
    lines.append("")

    splits = [s for s in ("validation", "test") if isinstance(evaluation.get(s), Mapping)]
    lines += ["## Splits", ""]
    if splits:
        lines += ["| split | images | " + " | ".join(description.get("class_names", CLASS_NAMES)) + " |",
                  "|---|---|" + "---|" * len(description.get("class_names", CLASS_NAMES))]
        for split in splits:
            per_class = evaluation[split].get("per_class") or {}
            counts = [str(per_class.get(c, {}).get("support", "?")) for c in description.get("class_names", CLASS_NAMES)]
            lines.append(f"| {split} | {evaluation[split].get('n', '?')} | " + " | ".join(counts) + " |")
        lines.append("")
        lines.append("Train / validation: CBIS-DDSM's training split divided 80/20 by patient (stratified); "
                     "test: CBIS-DDSM's official test split plus the normals' test share.")
    else:
        lines.append("No evaluation record was stored with this version.")
    lines.append("")

    lines += ["## Metrics ([low, high]: confidence interval from the evaluation record)", ""]
    if splits:
        lines += ["| split | accuracy | macro AUC | macro F1 |", "|---|---|---|---|"]
        for split in splits:
            m = evaluation[split]
            cells = [_fmt(m.get(key), _recorded_interval(m, key)) for key in ("accuracy", "macro_auc", "macro_f1")]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
        lines.append("")
        shown = "test" if "test" in splits else splits[-1]
        test = evaluation[shown]
        per_class = test.get("per_class") or {}
        if per_class:
            lines += [f"Per class ({shown}):", "",
                      "| class | sensitivity | specificity | F1 | AUC |", "|---|---|---|---|---|"]
            for name, s in per_class.items():
                cells = [_fmt(s.get(key), _recorded_interval(test, f"per_class_{key}", name))
                         for key in ("sensitivity", "specificity", "f1", "auc")]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
        lines.append("Intervals: " + "; ".join(_interval_method(split, evaluation[split]) for split in splits) + ".")
    else:
        metrics = description.get("test_metrics")
        lines.append(f"Test metrics from the deployment metadata (no intervals available): {json.dumps(metrics)}"
                     if metrics else "No metrics were stored with this version.")
    lines.append("")
    lines += ["## Intended use", "", INTENDED_USE, "", "## Limitations", "", LIMITATIONS, ""]
    return "\n".join(lines)

