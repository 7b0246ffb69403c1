"""Model selection and the promotion gate.

Selection uses the **validation** split only (macro AUC, then accuracy, then backbone name for a
stable tie-break), so the test split stays an unbiased estimate. The selected model is promoted
only if every check on the **test** split passes:

1. its ``metric`` (macro AUC by default) is defined and at least ``auc_threshold``;
2. when a champion (the model currently served) has a recorded test ``metric``: it is not lower
   than the champion's by more than ``max_auc_drop``;
3. when ``class_auc_floors`` are set: each named class's one-vs-rest test AUC is at least its floor.

First run (nothing served): the absolute checks only. A served version without an evaluation record
(pushed by something else) cannot be compared: the decision says so in its notes. ``force`` promotes
whatever the checks say, and the decision records that it was forced and what the checks said.

Every decision carries its reason and the list of checks, so a run that does not promote says why.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mammo.components.config import CLASS_NAMES, GateConfig

log = logging.getLogger(__name__)

#: written next to the selected model when its evaluation fitted a temperature
CALIBRATION_FILE = "calibration.json"


@dataclass
class GateDecision:
    selected_backbone: str
    metric: str
    value: float
    threshold: float
    champion_value: float | None
    champion_version: int | None
    promoted: bool
    reason: str
    forced: bool = False
    #: what the checks alone decided (differs from ``promoted`` only when forced)
    would_promote: bool = False
    max_auc_drop: float = 0.0
    class_floors: dict[str, float] = field(default_factory=dict)
    #: one dict per check: check, value, required, passed, detail
    checks: list[dict] = field(default_factory=list)
    #: facts a reviewer should see that are not checks (e.g. a champion without a record)
    notes: list[str] = field(default_factory=list)
    #: bootstrap interval of the selected model's test ``metric`` (when evaluate computed one)
    value_ci: list[float] | None = None
    #: the champion's description as deploy stored it (version, backbone, metrics), or None
    champion: dict | None = None
    candidates: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _num(x) -> float:
    return float(x) if x is not None and not (isinstance(x, float) and math.isnan(x)) else float("-inf")


def _defined(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def select_best(evaluations: list[dict]) -> dict:
    """The evaluation with the best validation macro AUC, then accuracy, then name."""
    if not evaluations:
        raise ValueError("no evaluations to select from (did every training task fail?)")
    return sorted(evaluations, key=lambda e: (-_num(e["validation"]["macro_auc"]),
                                              -_num(e["validation"]["accuracy"]), e["backbone"]))[0]


def champion_value(champion: dict | None, metric: str) -> float | None:
    """The champion's test ``metric`` from its deployment metadata, or None (absent or undefined)."""
    if not champion:
        return None
    value = (champion.get("test_metrics") or {}).get(metric)
    return float(value) if _defined(value) else None


def _check(name: str, value, required: str, passed: bool, detail: str) -> dict:
    return {"check": name, "value": value, "required": required, "passed": bool(passed), "detail": detail}


def decide(evaluations: list[dict], champion: dict | None, cfg: GateConfig) -> GateDecision:
    """Select on validation, then run the gate's checks on the selected model's test metrics."""
    best = select_best(evaluations)
    metric, test = cfg.metric, best["test"]
    raw = test.get(metric)
    value = float(raw) if _defined(raw) else float("nan")
    champ = champion_value(champion, metric)
    floors = cfg.class_floors()
    checks: list[dict] = []
    notes: list[str] = []

    # 1. the absolute threshold (an undefined metric fails it)
    if math.isnan(value):
        checks.append(_check(f"test {metric} defined", None, "a number", False,
                             f"test {metric} of {best['backbone']} is undefined"))
    else:
        ok = value >= cfg.auc_threshold
        checks.append(_check(f"test {metric} >= threshold", value, f">= {cfg.auc_threshold:.4f}", ok,
                             f"test {metric} {value:.4f} {'>=' if ok else '<'} threshold {cfg.auc_threshold:.4f}"))

    # 2. the champion (only when one is served and its record has the metric)
    if champion is None:
        notes.append("no champion served yet: absolute threshold only")
    elif champ is None:
        notes.append(f"champion version {champion.get('version')} has no recorded test {metric}: "
                     "it cannot be compared, absolute threshold only")
    elif not math.isnan(value):
        ok = value >= champ - cfg.max_auc_drop
        detail = (f"test {metric} {value:.4f} is within {cfg.max_auc_drop:.4f} of the champion's {champ:.4f}"
                  if ok and value < champ else
                  f"test {metric} {value:.4f} >= the champion's {champ:.4f}" if ok else
                  f"test {metric} {value:.4f} is worse than the champion's {champ:.4f} by more than "
                  f"max_auc_drop {cfg.max_auc_drop:.4f}")
        checks.append(_check(f"test {metric} vs champion v{champion.get('version')}", value,
                             f">= {champ - cfg.max_auc_drop:.4f} (champion {champ:.4f} - {cfg.max_auc_drop:.4f})",
                             ok, detail))

    # 3. per-class AUC floors
    for name, floor in floors.items():
        auc = (test.get("per_class", {}).get(name) or {}).get("auc")
        ok = _defined(auc) and float(auc) >= floor
        shown = f"{float(auc):.4f}" if _defined(auc) else "undefined"
        checks.append(_check(f"test AUC of {name} >= floor", float(auc) if _defined(auc) else None,
                             f">= {floor:.4f}", ok,
                             f"test AUC of {name} {shown} {'>=' if ok else '<'} floor {floor:.4f}"))

    ci = (test.get("ci") or {}).get(metric)
    if ci and _defined(ci[0]) and ci[0] < cfg.auc_threshold <= value:
        notes.append(f"the {100 * test['ci'].get('level', 0.95):.0f}% interval of test {metric} "
                     f"[{ci[0]:.4f}, {ci[1]:.4f}] reaches below the threshold {cfg.auc_threshold:.4f}")

    failed = [c for c in checks if not c["passed"]]
    would_promote = not failed
    reason = "; ".join(c["detail"] for c in (failed or checks))
    if champion is None and would_promote:
        reason += "; no champion served yet"
    if cfg.force:
        reason = ("FORCED by gate.force: " + ("the checks passed too: " if would_promote
                                              else "promoted although the checks failed: ") + reason)
        notes.append("promotion forced by configuration (gate.force=true)")
        log.warning("gate forced: %s", reason)

    return GateDecision(
        selected_backbone=best["backbone"], metric=metric, value=value, threshold=cfg.auc_threshold,
        champion_value=champ, champion_version=(champion or {}).get("version"),
        promoted=would_promote or cfg.force, reason=reason, forced=cfg.force, would_promote=would_promote,
        max_auc_drop=cfg.max_auc_drop, class_floors=floors, checks=checks, notes=notes, value_ci=ci,
        champion=_champion_summary(champion), candidates=_candidates(evaluations, metric),
    )


def _champion_summary(champion: dict | None) -> dict | None:
    if champion is None:
        return None
    return {k: champion.get(k) for k in ("version", "path", "backbone", "test_metrics", "validation_metrics", "gate")}


def _candidates(evaluations: list[dict], metric: str) -> list[dict]:
    rows = []
    for e in evaluations:
        ci = e["test"].get("ci") or {}
        rows.append({
            "backbone": e["backbone"],
            "validation_" + metric: e["validation"].get(metric),
            "validation_accuracy": e["validation"]["accuracy"],
            "test_" + metric: e["test"].get(metric),
            "test_accuracy": e["test"].get("accuracy"),
            "test_" + metric + "_ci": ci.get(metric),
            "test_accuracy_ci": ci.get("accuracy"),
            "train_seconds": (e.get("train") or {}).get("seconds"),
        })
    return rows


def model_metadata(decision: GateDecision, evaluation: dict) -> dict:
    """What deploy should store beside the pushed model (and what the next gate reads back).

    ``test_metrics.macro_auc`` is the champion key; the rest is the evidence a reviewer needs.
    """
    test, val = evaluation["test"], evaluation["validation"]
    ci = test.get("ci") or {}
    per_class = test.get("per_class", {})
    cal = evaluation.get("calibration")
    return {
        "backbone": evaluation["backbone"],
        "test_metrics": {
            **{k: test.get(k) for k in ("accuracy", "macro_auc", "macro_f1", "ece", "nll", "brier", "n",
                                        "n_patients")},
            "accuracy_ci": ci.get("accuracy"),
            "macro_auc_ci": ci.get("macro_auc"),
            "ci_level": ci.get("level"),
            "ci_method": ci.get("method"),
            "per_class_auc": {c: per_class.get(c, {}).get("auc") for c in CLASS_NAMES},
            "per_class_auc_ci": ci.get("per_class_auc"),
            "per_class": {c: _class_summary(per_class.get(c, {})) for c in CLASS_NAMES},
        },
        "validation_metrics": {k: val.get(k) for k in ("accuracy", "macro_auc", "macro_f1")},
        "calibration": ({k: cal[k] for k in ("temperature", "test_ece_before", "test_ece_after", "method")}
                        if cal else None),
        "gate": {k: getattr(decision, k) for k in ("metric", "value", "threshold", "champion_value",
                                                   "champion_version", "max_auc_drop", "class_floors", "promoted",
                                                   "forced", "would_promote", "reason", "checks", "notes")},
    }


def _class_summary(pc: dict) -> dict:
    """Sensitivity, specificity, F1 and sensitivity at each fixed specificity of one class."""
    at = pc.get("sensitivity_at_specificity", {})
    return {**{k: pc.get(k) for k in ("sensitivity", "specificity", "f1")},
            "sensitivity_at_specificity": {spec: point.get("sensitivity") for spec, point in at.items()}}


def write_calibration(model_dir: str | Path, evaluation: dict) -> Path | None:
    """Store the evaluation's fitted temperature next to the model (``calibration.json``), if any."""
    cal = evaluation.get("calibration")
    if not cal:
        return None
    path = Path(model_dir) / CALIBRATION_FILE
    record = {"temperature": cal["temperature"], "method": cal["method"],
              "apply_as": "softmax(log(probabilities) / temperature)",
              **{k: cal[k] for k in ("validation_nll_before", "validation_nll_after", "test_ece_before",
                                     "test_ece_after", "test_nll_before", "test_nll_after")}}
    path.write_text(json.dumps(record, indent=2))
    return path
