"""KFP wrapper of the deploy step (logic: mammo.components.deploy.logic)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def deploy(model: Input[Model], decision: Input[Artifact], config: dict, serving_root: str,
              serving: Output[Artifact]):
    """Export a serving SavedModel (with its evaluation record and model card) and push it as a new
    integer version under serving_root; optionally wait for TF Serving, check one answer, prune."""
    import json
    from pathlib import Path

    from mammo.components.config import CLASS_NAMES, Config
    from mammo.components.deploy.logic import deploy
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    cfg = Config.from_dict(config)
    gate = json.loads((Path(decision.path) / "report.json").read_text())
    best = next(e for e in gate["evaluations"] if e["backbone"] == gate["selected_backbone"])
    # the gate's description of the promoted model (test_metrics.macro_auc is what the next gate reads)
    metadata = gate.get("model_metadata") or {
        "backbone": gate["selected_backbone"],
        "test_metrics": {k: best["test"][k] for k in ("accuracy", "macro_auc", "macro_f1")},
        "validation_metrics": {k: best["validation"][k] for k in ("accuracy", "macro_auc", "macro_f1")},
        "gate": {k: gate[k] for k in ("metric", "value", "threshold", "champion_value", "reason")},
    }
    metadata = {**metadata, "class_names": list(CLASS_NAMES)}
    pushed = deploy(Path(model.path) / "model.keras", serving_root, cfg.deploy.model_name, metadata,
                    wait_for_rest_url=cfg.deploy.wait_for_rest_url, wait_timeout_s=cfg.deploy.wait_timeout_s,
                    evaluation=best, keep_versions=cfg.deploy.keep_versions,
                    check_prediction=cfg.deploy.check_prediction)
    out = artifact_dir(serving.path)
    record = {"step": "deploy", "model_name": cfg.deploy.model_name, "version": pushed.version, "path": pushed.path}
    (out / "report.json").write_text(json.dumps(record, indent=2))
    serving.metadata.update(record)
