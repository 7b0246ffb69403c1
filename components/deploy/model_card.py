"""The model card stored with every served version (``assets.extra``, Markdown).

Sections: model, data, splits, metrics with confidence intervals, intended use, limitations. The
intervals are the evaluation record's own where it has them (evaluate's patient-level bootstrap of
accuracy, macro AUC and per-class AUC); only what the record lacks (the validation split,
per-class sensitivity and specificity) gets an analytic interval: Wilson score for proportions,
Hanley & McNeil (1982) for an AUC. The card says which method each interval came from.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from mammo.components.config import CLASS_NAMES
from mammo.components.deploy.export import DEFAULT_SIGNATURE, PIXELS_SIGNATURE

_Z95 = 1.959963984540054

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


def wilson_interval(p: float, n: int, z: float = _Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials (None if undefined)."""
    if n <= 0 or p is None or not math.isfinite(p):
        return None
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float | None:
    """Hanley & McNeil (1982) standard error of a ROC AUC from ``n_pos`` positives and ``n_neg`` negatives."""
    if n_pos <= 0 or n_neg <= 0 or auc is None or not math.isfinite(auc):
        return None
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _given_interval(split: Mapping[str, Any], metric: str) -> tuple[tuple[float, float], str] | None:
    """An interval the evaluation record already holds for ``metric`` (e.g. a patient bootstrap), and its label.

    Accepted shapes: ``{"ci"|"intervals"|"confidence_intervals": {metric: [lo, hi] | {"low"/"lower",
    "high"/"upper"}, "method": ..., "level": ...}}`` or ``{f"{metric}_ci": ...}``.
    """
    candidates: list[tuple[Any, Mapping[str, Any]]] = [(split.get(f"{metric}_ci"), {})]
    for key in ("ci", "intervals", "confidence_intervals"):
        block = split.get(key)
        if isinstance(block, Mapping):
            candidates.append((block.get(metric), block))
    for value, block in candidates:
        interval = None
        if isinstance(value, (list, tuple)) and len(value) == 2 and None not in value:
            interval = float(value[0]), float(value[1])
        elif isinstance(value, Mapping):
            low = value.get("low", value.get("lower", value.get("lo")))
            high = value.get("high", value.get("upper", value.get("hi")))
            if low is not None and high is not None:
                interval = float(low), float(high)
        if interval:
            label = str(block.get("method") or "from the evaluation record")
            if block.get("level") is not None:
                label += f", level {float(block['level']):g}"
            return interval, label
    return None


def _split_intervals(split: Mapping[str, Any]) -> dict[str, tuple[tuple[float, float] | None, str]]:
    """95 % intervals of accuracy, macro AUC and macro F1: the record's own, else analytic ones."""
    out: dict[str, tuple[tuple[float, float] | None, str]] = {}
    n = int(split.get("n") or 0)
    per_class = split.get("per_class") or {}
    for metric in ("accuracy", "macro_auc", "macro_f1"):
        given = _given_interval(split, metric)
        if given:
            out[metric] = given
            continue
        value = split.get(metric)
        if metric == "accuracy":
            out[metric] = (wilson_interval(value, n), "Wilson score")
        elif metric == "macro_auc" and per_class and value is not None and math.isfinite(value):
            errors = []
            for stats in per_class.values():
                support = int(stats.get("support") or 0)
                errors.append(auc_standard_error(stats.get("auc"), support, n - support))
            if all(e is not None for e in errors):
                # mean of k one-vs-rest AUCs, their errors treated as independent (an approximation)
                se = math.sqrt(sum(e * e for e in errors)) / len(errors)
                out[metric] = ((max(0.0, value - _Z95 * se), min(1.0, value + _Z95 * se)), "Hanley-McNeil")
            else:
                out[metric] = (None, "not computed")
        else:
            out[metric] = (None, "not computed")
    return out


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

    lines += ["## Metrics (with confidence intervals; 95 % unless stated)", ""]
    if splits:
        lines += ["| split | accuracy | macro AUC | macro F1 |", "|---|---|---|---|"]
        methods: list[str] = []
        for split in splits:
            m = evaluation[split]
            intervals = _split_intervals(m)
            cells = [_fmt(m.get(metric), intervals[metric][0]) for metric in ("accuracy", "macro_auc", "macro_f1")]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
            methods.append(f"{split}: " + ", ".join(f"{metric} {intervals[metric][1]}" for metric in intervals))
        lines.append("")
        test = evaluation.get("test") if "test" in splits else evaluation[splits[-1]]
        per_class = test.get("per_class") or {}
        if per_class:
            n = int(test.get("n") or 0)
            lines += [f"Per class ({'test' if 'test' in splits else splits[-1]}):", "",
                      "| class | sensitivity | specificity | F1 | AUC |", "|---|---|---|---|---|"]
            for name, s in per_class.items():
                support = int(s.get("support") or 0)
                given = ((test.get("ci") or {}).get("per_class_auc") or {}).get(name)
                se = auc_standard_error(s.get("auc"), support, n - support)
                if isinstance(given, (list, tuple)) and len(given) == 2 and None not in given:
                    auc_ci = (float(given[0]), float(given[1]))  # the evaluation record's own interval
                else:
                    auc_ci = (max(0.0, s["auc"] - _Z95 * se), min(1.0, s["auc"] + _Z95 * se)) if se is not None else None
                lines.append(f"| {name} | {_fmt(s.get('sensitivity'), wilson_interval(s.get('sensitivity'), support))} "
                             f"| {_fmt(s.get('specificity'), wilson_interval(s.get('specificity'), n - support))} "
                             f"| {_fmt(s.get('f1'))} | {_fmt(s.get('auc'), auc_ci)} |")
            lines.append("")
        lines.append("Interval methods: " + "; ".join(methods) + ". Per-class sensitivity and specificity: "
                     "Wilson score; per-class AUC: the evaluation record's intervals where it has them, else Hanley-McNeil. Macro-AUC intervals from Hanley-McNeil treat "
                     "the one-vs-rest AUCs as independent (an approximation).")
    else:
        metrics = description.get("test_metrics")
        lines.append(f"Test metrics from the deployment metadata (no intervals available): {json.dumps(metrics)}"
                     if metrics else "No metrics were stored with this version.")
    lines.append("")
    lines += ["## Intended use", "", INTENDED_USE, "", "## Limitations", "", LIMITATIONS, ""]
    return "\n".join(lines)

