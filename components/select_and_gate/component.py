"""KFP wrapper of model selection and the promotion gate (logic: mammo.components.select_and_gate.logic)."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select_and_gate(evaluations: Input[List[Artifact]], models: Input[List[Model]], config: dict,
                    serving_root: str, decision: Output[Artifact], selected_model: Output[Model],
                    report: Output[HTML], metrics: Output[Metrics], dataset: Input[Dataset] = None) -> bool:
    """Best backbone on validation; promote iff its test metrics clear the threshold, the collapse
    check, the floors and the champion (re-scored on ``dataset``'s test split: without a dataset the
    champion's recorded figure is used and the decision says so).

    ``decision/report.json`` holds the decision, its checks, ``model_metadata`` (what deploy stores
    beside the pushed model) and every evaluation. ``report`` is the HTML a reviewer reads first.
    Returns ``promoted`` as the task's single output: kfp.local resolves a ``dsl.If`` on a task's
    ``Output`` but not on a named output of a multi-output component (kfp 2.17).
    """
    import math

    from mammo.components.config import Config
    from mammo.components.runtime import setup_logging
    from mammo.components.select_and_gate.logic import run

    setup_logging()
    result = run([e.path for e in evaluations], [m.path for m in models], serving_root, decision.path,
                 selected_model.path, Config.from_dict(config), dataset.path if dataset is not None else None,
                 report.path)
    comparison = result.champion_comparison or {}
    for key, value in (("value", result.value), ("threshold", result.threshold),
                       ("champion_value", result.champion_value), ("promoted", float(result.promoted)),
                       ("forced", float(result.forced)), ("champion_difference", comparison.get("difference")),
                       *zip(("champion_difference_low", "champion_difference_high"), comparison.get("interval") or ())):
        if value is not None and math.isfinite(float(value)):
            metrics.log_metric(f"gate_{key}", float(value))
    decision.metadata.update({"selected_backbone": result.selected_backbone, "promoted": result.promoted,
                              "forced": result.forced, "reason": result.reason})
    return result.promoted
