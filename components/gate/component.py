"""KFP wrapper of model selection and the promotion gate (logic: mammo.components.gate.logic)."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def select_and_gate_op(evaluations: Input[List[Artifact]], models: Input[List[Model]], config: dict,
                       serving_root: str, decision: Output[Artifact],
                       selected_model: Output[Model]) -> bool:
    """Best backbone on validation; promote iff its test metric clears the threshold and the champion.

    Returns ``promoted`` as the task's single output: kfp.local resolves a ``dsl.If`` on a task's
    ``Output`` but not on a named output of a multi-output component (kfp 2.17).
    """
    import json
    import shutil
    from pathlib import Path

    from mammo.components.config import Config
    from mammo.components.deploy.logic import current_champion
    from mammo.components.gate.logic import decide
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    cfg = Config.from_dict(config)
    evals = [json.loads((Path(e.path) / "metrics.json").read_text()) for e in evaluations]
    champion = current_champion(serving_root, cfg.deploy.model_name)
    result = decide(evals, champion, cfg.gate)
    out = artifact_dir(decision.path)
    record = {"step": "gate", **result.to_dict(), "evaluations": evals}
    (out / "report.json").write_text(json.dumps(record, indent=2))
    model_dirs = {json.loads((Path(m.path) / "report.json").read_text())["backbone"]: Path(m.path) for m in models}
    shutil.copytree(model_dirs[result.selected_backbone], selected_model.path, dirs_exist_ok=True)
    print(f"gate: selected {result.selected_backbone}; promoted={result.promoted}: {result.reason}")
    return result.promoted
