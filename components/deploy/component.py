"""KFP wrapper of the deploy step (logic: mammo.components.deploy.logic)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def deploy_op(model: Input[Model], decision: Input[Artifact], config: dict, serving_root: str,
              serving: Output[Artifact]):
    """Export a serving SavedModel and push it as a new integer version under serving_root."""
    import json
    from pathlib import Path

    from mammo.components.config import CLASS_NAMES, Config
    from mammo.components.deploy.logic import deploy
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    cfg = Config.from_dict(config)
    gate = json.loads((Path(decision.path) / "report.json").read_text())
    best = next(e for e in gate["evaluations"] if e["backbone"] == gate["selected_backbone"])
    metadata = {
        "backbone": gate["selected_backbone"],
        "class_names": list(CLASS_NAMES),
        "test_metrics": {k: best["test"][k] for k in ("accuracy", "macro_auc", "macro_f1")},
        "validation_metrics": {k: best["validation"][k] for k in ("accuracy", "macro_auc", "macro_f1")},
        "gate": {k: gate[k] for k in ("metric", "value", "threshold", "champion_value", "reason")},
    }
    pushed = deploy(Path(model.path) / "model.keras", serving_root, cfg.deploy.model_name, metadata,
                    wait_for_rest_url=cfg.deploy.wait_for_rest_url, wait_timeout_s=cfg.deploy.wait_timeout_s)
    out = artifact_dir(serving.path)
    record = {"step": "deploy", "model_name": cfg.deploy.model_name, "version": pushed.version, "path": pushed.path}
    (out / "report.json").write_text(json.dumps(record, indent=2))
    serving.metadata.update(record)
