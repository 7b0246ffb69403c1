"""Model selection and the promotion gate.

Selection uses the **validation** split only (macro AUC, then accuracy, then backbone name for a
stable tie-break), so the test split stays an unbiased estimate. The selected model is promoted
only if every check on the **test** split passes:

1. its ``metric`` (macro AUC by default) is defined and at least ``auc_threshold``;
2. it has not collapsed: no class receives more than ``max_single_class_fraction`` of the test
   patches' predictions;
3. when a champion (the model currently served) exists: it is not worse than the champion by more
   than ``max_auc_drop``, judged on **today's test set**: the champion's SavedModel is re-scored on
   it and the lower bound of the paired patient-level bootstrap interval of ``challenger -
   champion`` must be above ``-max_auc_drop`` (:mod:`mammo.components.select_and_gate.champion`).
   When the champion cannot be scored, its recorded test ``metric`` is the fallback (point
   estimates, as before) and the decision says so;
4. when ``class_auc_floors`` are set: each named class's one-vs-rest test AUC is at least its floor.

First run (nothing served): the absolute checks only. ``force`` promotes whatever the checks say,
and the decision records that it was forced and what the checks said. The evaluation's shortcut
audit is not a check but a warning: when the model's test macro AUC is not above the metadata-only
baseline's by ``shortcut_margin``, the notes (and the report) say so.

Every decision carries its reason and the list of checks, so a run that does not promote says why.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from mammo.components.config import CLASS_NAMES, Config, GateConfig
from mammo.components.contracts import (CALIBRATION, METRICS, REPORT_HTML, read_json, read_report, write_json,
                                        write_report)

log = logging.getLogger(__name__)


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
    #: the paired comparison with the champion on this test set (``available: false`` + ``reason``
    #: when the recorded figure was used instead); None without a champion
    champion_comparison: dict | None = None
    #: the selected model's shortcut audit beside its test macro AUC (from its evaluation)
    shortcut_audit: dict | None = None

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


def collapsed_class(test: dict, limit: float) -> tuple[str, float] | None:
    """(class, share) when one class receives more than ``limit`` of the test predictions, else None."""
    cm = test.get("confusion_matrix") or []
    total = sum(sum(row) for row in cm)
    if not total:
        return None
    shares = [sum(row[j] for row in cm) / total for j in range(len(CLASS_NAMES))]
    j = max(range(len(shares)), key=shares.__getitem__)
    return (CLASS_NAMES[j], shares[j]) if shares[j] > limit else None


def _champion_check(value: float, champion: dict, comparison: dict | None, cfg: GateConfig,
                    notes: list[str]) -> tuple[dict | None, float | None]:
    """The champion check (paired on this test set, else the recorded figure) and the champion's value."""
    metric, drop, version = cfg.metric, cfg.max_auc_drop, champion.get("version")
    if comparison and comparison.get("available"):
        low, high = comparison["interval"]
        diff, champ = comparison["difference"], comparison["champion"]
        level = 100 * comparison.get("level", 0.95)
        ok = _defined(low) and low > -drop
        detail = (f"on this test set {metric} {comparison['challenger']:.4f} vs champion v{version} {champ:.4f}: "
                  f"difference {diff:+.4f}, {level:.0f}% paired interval [{low:+.4f}, {high:+.4f}]; lower bound "
                  + (f"above -max_auc_drop {-drop:.4f}" if ok else f"not above -max_auc_drop {-drop:.4f}"))
        return _check(f"test {metric} vs champion v{version} (paired, this test set)", diff,
                      f"interval lower bound > {-drop:.4f}", ok, detail), champ
    recorded = champion_value(champion, metric)
    why = (comparison or {}).get("reason", "no paired comparison")
    if recorded is None:
        notes.append(f"champion version {version} has no recorded test {metric} and {why}: "
                     "it cannot be compared, absolute threshold only")
        return None, None
    notes.append(f"{why}; compared with the champion's recorded test {metric} {recorded:.4f} instead "
                 "(measured on the test set of its own run)")
    if math.isnan(value):
        return None, recorded
    ok = value >= recorded - drop
    detail = (f"test {metric} {value:.4f} is within {drop:.4f} of the champion's recorded {recorded:.4f}"
              if ok and value < recorded else
              f"test {metric} {value:.4f} >= the champion's recorded {recorded:.4f}" if ok else
              f"test {metric} {value:.4f} is worse than the champion's recorded {recorded:.4f} by more than "
              f"max_auc_drop {drop:.4f}")
    return _check(f"test {metric} vs champion v{version} (recorded figure)", value,
                  f">= {recorded - drop:.4f} (champion {recorded:.4f} - {drop:.4f})", ok, detail), recorded


def shortcut_note(evaluation: dict, margin: float) -> str | None:
    """A warning when the model is not clearly above the metadata-only baseline (else None)."""
    audit = evaluation.get("shortcut_audit") or {}
    if not audit.get("available"):
        return None
    diff = audit.get("model_minus_shortcut")
    if diff is not None and _defined(diff) and diff >= margin:
        return None
    return (f"WARNING shortcut: a classifier on patch metadata only ({', '.join(audit.get('features', {}))}) "
            f"reaches macro AUC {audit['macro_auc']:.4f}, the model {_fmt(audit.get('model_macro_auc'))}: the model is "
            f"not above it by gate.shortcut_margin {margin:.4f}; it may read the field of view, not the tissue")


def _fmt(x) -> str:
    return f"{float(x):.4f}" if _defined(x) else "undefined"


def decide(evaluations: list[dict], champion: dict | None, cfg: GateConfig,
           comparison: dict | None = None) -> GateDecision:
    """Select on validation, then run the gate's checks on the selected model's test metrics.

    ``comparison`` is the paired comparison with the champion on this test set
    (:func:`mammo.components.select_and_gate.champion.compare_with_champion`); without one (or
    ``available: false``) the champion's recorded figure is used and the notes say why.
    """
    best = select_best(evaluations)
    metric, test = cfg.metric, best["test"]
    raw = test.get(metric)
    value = float(raw) if _defined(raw) else float("nan")
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

    # 2. a collapsed model (one class for almost every patch)
    collapsed = collapsed_class(test, cfg.max_single_class_fraction)
    if collapsed:
        name, share = collapsed
        checks.append(_check("no class predicted for most test patches", share,
                             f"<= {cfg.max_single_class_fraction:.2f} per class", False,
                             f"the model collapsed: it predicts {name} for {100 * share:.1f}% of the test patches "
                             f"(more than {100 * cfg.max_single_class_fraction:.0f}%)"))
    elif not test.get("confusion_matrix"):
        notes.append("the evaluation has no test confusion matrix: the collapse check was not run")
    else:
        checks.append(_check("no class predicted for most test patches", None,
                             f"<= {cfg.max_single_class_fraction:.2f} per class", True,
                             f"no class receives more than {100 * cfg.max_single_class_fraction:.0f}% of the "
                             "test predictions"))

    # 3. the champion
    champ = None
    if champion is None:
        notes.append("no champion served yet: absolute checks only")
    else:
        check, champ = _champion_check(value, champion, comparison, cfg, notes)
        if check:
            checks.append(check)

    # 4. per-class AUC floors
    for name, floor in floors.items():
        pc = test.get("per_class", {}).get(name) or {}
        auc = pc.get("auc")
        ok = _defined(auc) and float(auc) >= floor
        shown = f"{float(auc):.4f}" if _defined(auc) else "undefined" + (f" ({pc['auc_undefined']})"
                                                                           if pc.get("auc_undefined") else "")
        checks.append(_check(f"test AUC of {name} >= floor", float(auc) if _defined(auc) else None,
                             f">= {floor:.4f}", ok,
                             f"test AUC of {name} {shown} {'>=' if ok else '<'} floor {floor:.4f}"))

    ci = (test.get("ci") or {}).get(metric)
    if ci and _defined(ci[0]) and ci[0] < cfg.auc_threshold <= value:
        notes.append(f"the {100 * test['ci'].get('level', 0.95):.0f}% interval of test {metric} "
                     f"[{ci[0]:.4f}, {ci[1]:.4f}] reaches below the threshold {cfg.auc_threshold:.4f}")
    notes += list(test.get("undefined_auc") or [])
    warning = shortcut_note(best, cfg.shortcut_margin)
    if warning:
        notes.append(warning)

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
        champion_comparison=comparison if champion is not None else None,
        shortcut_audit=best.get("shortcut_audit"),
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
                                                   "forced", "would_promote", "reason", "checks", "notes",
                                                   "champion_comparison")},
        "shortcut_audit": _shortcut_summary(evaluation.get("shortcut_audit")),
    }


def _shortcut_summary(audit: dict | None) -> dict | None:
    """The shortcut audit as the model card shows it (no per-fold detail)."""
    if not audit:
        return None
    return {k: audit.get(k) for k in ("available", "macro_auc", "model_macro_auc", "model_minus_shortcut",
                                      "features", "missing_features", "method", "note") if k in audit}


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
    record = {"temperature": cal["temperature"], "method": cal["method"],
              "apply_as": "softmax(log(probabilities) / temperature)",
              **{k: cal[k] for k in ("validation_nll_before", "validation_nll_after", "test_ece_before",
                                     "test_ece_after", "test_nll_before", "test_nll_after")}}
    return write_json(Path(model_dir) / CALIBRATION, record)


def run(evaluations: Sequence[str | Path], models: Sequence[str | Path], serving_root: str | Path,
        decision_dir: str | Path, selected_model: str | Path, cfg: Config, dataset: str | Path | None = None,
        report_html: str | Path | None = None) -> GateDecision:
    """The select_and_gate step.

    Reads each evaluation's ``metrics.json`` and each train output's report (for its backbone),
    selects on validation, re-scores the served champion on ``dataset``'s test split (None: the
    recorded figure is used, and the decision says so), decides, and writes ``decision_dir``'s
    ``report.json`` (the decision, its checks, ``model_metadata`` for deploy and every evaluation)
    and ``report.html`` (also copied to ``report_html``). The selected train output is copied to
    ``selected_model`` with its ``calibration.json``.
    """
    from mammo.components.select_and_gate.champion import compare_with_champion, current_champion
    from mammo.components.select_and_gate.report import render_gate_html

    eval_dirs = {read_json(Path(e) / METRICS)["backbone"]: Path(e) for e in evaluations}
    evals = [read_json(d / METRICS) for d in eval_dirs.values()]
    best = select_best(evals)
    champion = current_champion(serving_root, cfg.deploy.model_name)
    comparison = (compare_with_champion(champion, eval_dirs[best["backbone"]], dataset, cfg)
                  if champion is not None else None)
    result = decide(evals, champion, cfg.gate, comparison)
    out = Path(decision_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, "select_and_gate", {**result.to_dict(), "model_metadata": model_metadata(result, best),
                                          "evaluations": evals})
    page = render_gate_html(result.to_dict(), evals)
    (out / REPORT_HTML).write_text(page)
    if report_html is not None:
        Path(report_html).write_text(page)
    model_dirs = {read_report(m)["backbone"]: Path(m) for m in models}
    if result.selected_backbone not in model_dirs:
        raise ValueError(f"no train output for the selected backbone {result.selected_backbone!r} among "
                         f"{sorted(model_dirs)}")
    shutil.copytree(model_dirs[result.selected_backbone], selected_model, dirs_exist_ok=True)
    write_calibration(selected_model, best)
    log.info("selected %s; promoted=%s: %s", result.selected_backbone, result.promoted, result.reason)
    return result
