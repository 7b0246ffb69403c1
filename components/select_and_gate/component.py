"""KFP wrapper of model selection and the promotion gate (logic: mammo.components.select_and_gate.logic)."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select_and_gate(evaluations: Input[List[Artifact]], models: Input[List[Model]], config: dict,
                       serving_root: str, decision: Output[Artifact], selected_model: Output[Model],
                       report: Output[HTML], metrics: Output[Metrics]) -> bool:
    """Best backbone on validation; promote iff its test metrics clear the threshold, floors and champion.

    ``decision/report.json`` holds the decision, its checks, ``model_metadata`` (what deploy stores
    beside the pushed model) and every evaluation. ``report`` is the HTML a reviewer reads first.
    Returns ``promoted`` as the task's single output: kfp.local resolves a ``dsl.If`` on a task's
    ``Output`` but not on a named output of a multi-output component (kfp 2.17).
    """
    import json
    import logging
    import math
    import shutil
    from pathlib import Path

    from mammo.components.config import Config
    from mammo.components.deploy.logic import current_champion
    from mammo.components.evaluate.report import render_gate_html
    from mammo.components.select_and_gate.logic import decide, model_metadata, write_calibration
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    cfg = Config.from_dict(config)
    evals = [json.loads((Path(e.path) / "metrics.json").read_text()) for e in evaluations]
    champion = current_champion(serving_root, cfg.deploy.model_name)
    result = decide(evals, champion, cfg.gate)
    best = next(e for e in evals if e["backbone"] == result.selected_backbone)
    out = artifact_dir(decision.path)
    record = {"step": "select_and_gate", **result.to_dict(), "model_metadata": model_metadata(result, best), "evaluations": evals}
    (out / "report.json").write_text(json.dumps(record, indent=2))
    page = render_gate_html(result.to_dict(), evals)
    (out / "report.html").write_text(page)
    Path(report.path).write_text(page)

    model_dirs = {json.loads((Path(m.path) / "report.json").read_text())["backbone"]: Path(m.path) for m in models}
    shutil.copytree(model_dirs[result.selected_backbone], selected_model.path, dirs_exist_ok=True)
    write_calibration(selected_model.path, best)

    for key, value in (("value", result.value), ("threshold", result.threshold),
                       ("champion_value", result.champion_value), ("promoted", float(result.promoted)),
                       ("forced", float(result.forced))):
        if value is not None and math.isfinite(float(value)):
            metrics.log_metric(f"gate_{key}", float(value))
    decision.metadata.update({"selected_backbone": result.selected_backbone, "promoted": result.promoted,
                              "forced": result.forced, "reason": result.reason})
    logging.getLogger("mammo.gate").info("selected %s; promoted=%s: %s", result.selected_backbone,
                                         result.promoted, result.reason)
    return result.promoted
