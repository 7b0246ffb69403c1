"""KFP wrapper of evaluation (logic: mammo.components.evaluate.logic)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_op(model: Input[Model], dataset: Input[Dataset], backbone: str, evaluation: Output[Artifact],
                metrics: Output[Metrics], classification: Output[ClassificationMetrics], report: Output[HTML]):
    """Validation and test metrics; KFP Metrics, ClassificationMetrics (confusion matrix, ROC) and HTML."""
    import json
    import shutil
    from pathlib import Path

    from mammo.components.config import CLASS_NAMES
    from mammo.components.evaluate.logic import evaluate_model
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    out = artifact_dir(evaluation.path)
    train_report = json.loads((Path(model.path) / "report.json").read_text())
    result = evaluate_model(Path(model.path) / "model.keras", dataset.path, out, backbone, train_report)
    shutil.copyfile(out / "report.html", report.path)
    for split in ("validation", "test"):
        m = result[split]
        for key in ("accuracy", "macro_auc", "macro_f1"):
            metrics.log_metric(f"{split}_{key}", m[key])
        if split == "test":
            for name, pc in m["per_class"].items():
                for key in ("sensitivity", "specificity", "f1", "auc"):
                    metrics.log_metric(f"test_{name}_{key}", pc[key])
    classification.log_confusion_matrix(list(CLASS_NAMES), result["test"]["confusion_matrix"])
    evaluation.metadata.update({"backbone": backbone, "test_macro_auc": result["test"]["macro_auc"]})
