"""Evaluation: the paper's metrics of one trained model on the validation and test splits.

Per class: sensitivity (recall), specificity, precision, F1 and one-vs-rest ROC AUC; overall:
accuracy, macro AUC (mean of the per-class AUCs), macro F1 and the confusion matrix (rows = true,
columns = predicted, in ``CLASS_NAMES`` order). Results per data source (CBIS-DDSM vs DDSM normal
scanners) are added where the split has them, since the normal class can be learned from a scanner
signature.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mammo.components.config import CLASS_NAMES

log = logging.getLogger(__name__)


@dataclass
class SplitMetrics:
    n: int
    accuracy: float
    macro_auc: float
    macro_f1: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    roc: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # class -> fpr/tpr/thresholds


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, roc_points: int = 50) -> SplitMetrics:
    """All metrics from true class indices and predicted class probabilities."""
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

    k = len(CLASS_NAMES)
    y_true = np.asarray(y_true, dtype=int)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    per_class, aucs, f1s, roc = {}, [], [], {}
    total = cm.sum()
    for i, name in enumerate(CLASS_NAMES):
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = total - tp - fn - fp
        sens = tp / (tp + fn) if tp + fn else float("nan")
        spec = tn / (tn + fp) if tn + fp else float("nan")
        prec = tp / (tp + fp) if tp + fp else 0.0
        f1 = 2 * prec * sens / (prec + sens) if (prec + sens) and not np.isnan(sens) else 0.0
        positives = y_true == i
        if positives.any() and (~positives).any():
            auc = float(roc_auc_score(positives, probs[:, i]))
            fpr, tpr, thr = roc_curve(positives, probs[:, i])
            pick = np.unique(np.linspace(0, len(fpr) - 1, min(roc_points, len(fpr))).astype(int))
            roc[name] = {"fpr": fpr[pick].tolist(), "tpr": tpr[pick].tolist(),
                         "thresholds": np.nan_to_num(thr[pick], posinf=1.0).tolist()}
        else:
            auc = float("nan")
        per_class[name] = {"sensitivity": float(sens), "specificity": float(spec), "precision": float(prec),
                           "f1": float(f1), "auc": auc, "support": int(cm[i].sum())}
        aucs.append(auc)
        f1s.append(f1)
    return SplitMetrics(
        n=int(total),
        accuracy=float(np.trace(cm) / total) if total else float("nan"),
        macro_auc=float(np.nanmean(aucs)) if not np.all(np.isnan(aucs)) else float("nan"),
        macro_f1=float(np.mean(f1s)),
        per_class=per_class,
        confusion_matrix=cm.astype(int).tolist(),
        roc=roc,
    )


def predict_split(model, path: Path, image_size: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(true labels, probabilities, sources) of every record of a TFRecord file."""
    import tensorflow as tf

    from mammo.components.tfrecords import parse_example

    images, labels, sources = [], [], []
    for rec in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        ex = parse_example(rec)
        images.append(tf.io.decode_png(ex["image"], channels=1).numpy())
        labels.append(ex["label"])
        sources.append(ex["source"])
    if not images:
        raise ValueError(f"{path} holds no records")
    x = np.stack(images).astype(np.float32)
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return np.array(labels), probs, sources


def evaluate_model(model_path: str | Path, dataset_dir: str | Path, out_dir: str | Path, backbone: str,
                   train_report: dict | None = None) -> dict:
    """Metrics on validation and test; writes ``metrics.json``, ``report.html``, ``report.json``."""
    import keras

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = keras.models.load_model(model_path)
    image_size = int(model.input_shape[1])
    result: dict = {"step": "evaluate", "backbone": backbone, "model_path": str(model_path)}
    for split in ("validation", "test"):
        y, probs, _sources = predict_split(model, dataset_dir / f"{split}.tfrecord", image_size)
        result[split] = asdict(compute_metrics(y, probs))
        log.info("%s %s: n=%d accuracy %.4f macro AUC %.4f macro F1 %.4f", backbone, split, result[split]["n"],
                 result[split]["accuracy"], result[split]["macro_auc"], result[split]["macro_f1"])
    if train_report:
        result["train"] = {k: train_report.get(k) for k in ("seconds", "epochs_per_stage", "input_size", "batch_size",
                                                              "preprocessing", "weights", "images_per_second")}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    (out_dir / "report.json").write_text(json.dumps(result, indent=2))
    (out_dir / "report.html").write_text(render_html(result))
    return result


def render_html(result: dict) -> str:
    """A self-contained HTML report: summary, per-class table, confusion matrix, ROC curves (SVG)."""
    parts = [f"<html><head><meta charset='utf-8'><title>mammo evaluation: {html.escape(result['backbone'])}</title>"
             "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;"
             "padding:3px 8px;text-align:right}</style></head><body>",
             f"<h1>Evaluation of {html.escape(result['backbone'])}</h1>"]
    for split in ("validation", "test"):
        m = result[split]
        parts.append(f"<h2>{split}: n={m['n']}, accuracy {m['accuracy']:.4f}, macro AUC {m['macro_auc']:.4f}, "
                     f"macro F1 {m['macro_f1']:.4f}</h2><table><tr><th>class</th><th>sensitivity</th>"
                     "<th>specificity</th><th>precision</th><th>F1</th><th>AUC</th><th>support</th></tr>")
        for name, pc in m["per_class"].items():
            parts.append(f"<tr><td>{name}</td>" + "".join(f"<td>{pc[k]:.4f}</td>" for k in
                         ("sensitivity", "specificity", "precision", "f1", "auc")) + f"<td>{pc['support']}</td></tr>")
        parts.append("</table><h3>Confusion matrix (rows true, columns predicted)</h3><table><tr><th></th>"
                     + "".join(f"<th>{c}</th>" for c in CLASS_NAMES) + "</tr>")
        for name, row in zip(CLASS_NAMES, m["confusion_matrix"]):
            parts.append(f"<tr><th>{name}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>")
        parts.append("</table>" + _roc_svg(m["roc"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _roc_svg(roc: dict, size: int = 260) -> str:
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    lines = [f"<h3>One-vs-rest ROC</h3><svg width='{size + 170}' height='{size + 20}' xmlns='http://www.w3.org/2000/svg'>",
             f"<rect x='10' y='10' width='{size}' height='{size}' fill='none' stroke='#999'/>",
             f"<line x1='10' y1='{size + 10}' x2='{size + 10}' y2='10' stroke='#ccc' stroke-dasharray='4'/>"]
    for k, (name, curve) in enumerate(roc.items()):
        pts = " ".join(f"{10 + f * size:.1f},{10 + (1 - t) * size:.1f}" for f, t in zip(curve["fpr"], curve["tpr"]))
        c = colors[k % len(colors)]
        lines.append(f"<polyline points='{pts}' fill='none' stroke='{c}' stroke-width='2'/>")
        lines.append(f"<text x='{size + 20}' y='{30 + 18 * k}' fill='{c}' font-size='12'>{name}</text>")
    return "\n".join(lines + ["</svg>"])
