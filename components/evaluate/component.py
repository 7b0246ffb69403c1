"""KFP wrapper of evaluation (logic: mammo.components.evaluate.logic).

KFP UI outputs: ``metrics`` (scalars: validation and test headline numbers, the test intervals,
calibration and every class's test sensitivity / specificity / F1 / AUC / sensitivity at the fixed
specificities), ``classification`` (the test confusion matrix in the paper's class order and one
ROC curve) and ``report`` (HTML with all five one-vs-rest ROC curves, the reliability plot, the
subgroup tables). A ``ClassificationMetrics`` artifact holds one ROC curve; the one logged is the
micro average (all classes pooled one-vs-rest), which has real thresholds for the UI's threshold
readout. One artifact per class would need five more fixed outputs per backbone for a view the HTML
report already gives.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(model: Input[Model], dataset: Input[Dataset], backbone: str, evaluation: Output[Artifact],
                metrics: Output[Metrics], classification: Output[ClassificationMetrics], report: Output[HTML],
                config: dict = {}, cases: Input[Dataset] = None):
    """Validation and test metrics with intervals, calibration and the shortcut audit; KFP Metrics,
    ClassificationMetrics, HTML (logic: :func:`mammo.components.evaluate.logic.run`). With ``cases``
    (ingest's output) the report also shows heatmaps of a few full test images."""
    import math

    from mammo.components.config import CLASS_NAMES, Config
    from mammo.components.evaluate.logic import run
    from mammo.components.runtime import setup_logging

    setup_logging()
    result = run(model.path, dataset.path, evaluation.path, Config.from_dict(config), backbone, report.path,
                 cases.path if cases is not None else None)

    def log(key: str, value) -> None:  # KFP metadata is JSON: skip undefined values
        if value is not None and math.isfinite(float(value)):
            metrics.log_metric(key, float(value))

    for split in ("validation", "test"):
        for key in ("accuracy", "macro_auc", "macro_f1", "ece"):
            log(f"{split}_{key}", result[split][key])
    test = result["test"]
    for key in ("accuracy", "macro_auc"):
        for bound, value in zip(("low", "high"), (test.get("ci") or {}).get(key) or ()):
            log(f"test_{key}_ci_{bound}", value)
    if result.get("calibration"):
        log("temperature", result["calibration"]["temperature"])
        log("test_ece_after_temperature", result["calibration"]["test_ece_after"])
    for name, pc in test["per_class"].items():
        for key in ("sensitivity", "specificity", "f1", "auc"):
            log(f"test_{name}_{key}", pc[key])
        for spec, point in pc["sensitivity_at_specificity"].items():
            # e.g. test_normal_sensitivity_at_specificity_90 (no dot in a metric name)
            log(f"test_{name}_sensitivity_at_specificity_{round(100 * float(spec))}", point["sensitivity"])
    classification.log_confusion_matrix(list(CLASS_NAMES), test["confusion_matrix"])
    if test.get("micro_roc"):
        roc = test["micro_roc"]
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    audit = result.get("shortcut_audit") or {}
    if audit.get("available"):
        log("shortcut_audit_macro_auc", audit["macro_auc"])
    evaluation.metadata.update({"backbone": backbone, "test_macro_auc": test["macro_auc"],
                                "test_accuracy": test["accuracy"],
                                "shortcut_audit_macro_auc": audit.get("macro_auc")})
