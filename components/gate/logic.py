"""Model selection and the promotion gate.

Selection uses the **validation** split only (macro AUC, then accuracy, then backbone name for a
stable tie-break), so the test split stays an unbiased estimate. The selected model is promoted
only if, on the **test** split,

1. its ``metric`` (macro AUC by default) is at least ``auc_threshold``, and
2. it is not worse than the model currently served (the champion) by more than ``max_auc_drop``.

Every decision carries its reason, so a run that does not promote says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from mammo.components.config import GateConfig


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
    candidates: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _num(x) -> float:
    return float(x) if x is not None and not (isinstance(x, float) and math.isnan(x)) else float("-inf")


def select_best(evaluations: list[dict]) -> dict:
    """The evaluation with the best validation macro AUC, then accuracy, then name."""
    if not evaluations:
        raise ValueError("no evaluations to select from (did every training task fail?)")
    return sorted(evaluations, key=lambda e: (-_num(e["validation"]["macro_auc"]),
                                              -_num(e["validation"]["accuracy"]), e["backbone"]))[0]


def champion_value(champion: dict | None, metric: str) -> float | None:
    """The champion's test ``metric`` from its deployment metadata, or None."""
    if not champion:
        return None
    value = champion.get("test_metrics", {}).get(metric)
    return None if value is None else float(value)


def decide(evaluations: list[dict], champion: dict | None, cfg: GateConfig) -> GateDecision:
    best = select_best(evaluations)
    value = float(best["test"][cfg.metric]) if cfg.metric in best["test"] else float("nan")
    champ = champion_value(champion, cfg.metric)
    candidates = [{"backbone": e["backbone"], "validation_" + cfg.metric: e["validation"].get(cfg.metric),
                   "validation_accuracy": e["validation"]["accuracy"], "test_" + cfg.metric: e["test"].get(cfg.metric)}
                  for e in evaluations]
    if math.isnan(value):
        promoted, reason = False, f"test {cfg.metric} of {best['backbone']} is undefined"
    elif value < cfg.auc_threshold:
        promoted, reason = False, f"test {cfg.metric} {value:.4f} < threshold {cfg.auc_threshold:.4f}"
    elif champ is not None and value < champ - cfg.max_auc_drop:
        promoted, reason = False, (f"test {cfg.metric} {value:.4f} is worse than the champion's {champ:.4f} by more "
                                   f"than max_auc_drop {cfg.max_auc_drop:.4f}")
    else:
        promoted = True
        reason = f"test {cfg.metric} {value:.4f} >= threshold {cfg.auc_threshold:.4f}" + (
            f" and within {cfg.max_auc_drop:.4f} of the champion's {champ:.4f}" if champ is not None
            else "; no champion served yet")
    return GateDecision(
        selected_backbone=best["backbone"], metric=cfg.metric, value=value, threshold=cfg.auc_threshold,
        champion_value=champ, champion_version=(champion or {}).get("version"), promoted=promoted, reason=reason,
        candidates=candidates,
    )
