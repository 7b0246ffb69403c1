"""The gate's HTML report from ``templates/gate.html.j2``: the decision and its reasons first, warnings,
the checks, the champion comparison on this test set, the comparison of all backbones (the shape
of the paper's Table 2, with training time), then the selected backbone's full evaluation (the
evaluation report's sections, shared through :func:`mammo.components.evaluate.report.environment`).
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


def render_gate_html(decision: dict, evaluations: list[dict]) -> str:
    """The gate report of a decision (``GateDecision.to_dict()``) and the evaluations it chose from."""
    from mammo.components.evaluate.report import environment

    forced, promoted = decision.get("forced", False), decision["promoted"]
    verdict = "FORCED PROMOTION" if forced else ("PROMOTED" if promoted else "NOT PROMOTED")
    best = next((e for e in evaluations if e["backbone"] == decision["selected_backbone"]), None)
    return environment(TEMPLATES).get_template("gate.html.j2").render(
        decision=decision, evaluations=evaluations, best=best, verdict=verdict,
        css="forced" if forced else ("pass" if promoted else "fail"))
