"""Evaluation of one trained model: the step's entry point :func:`run` and what it adds around the
numbers of :mod:`mammo.components.evaluate.metrics`.

For validation and test: the paper's metrics, operating points and calibration. On the test split
only (what the gate decides on): patient-level bootstrap intervals; **subgroups** by abnormality
type, data source, scanner, breast density and view (columns joined from the balance step's
``splits.parquet``; the view is parsed from the case id when the table lacks it; a subgroup column
that is not available is reported as such); optional **temperature scaling** fitted on validation
(the other metrics stay those of the raw outputs, which is what deploy serves); the **shortcut
audit** (:mod:`mammo.components.evaluate.shortcut`) beside the model's macro AUC; and
**explanations** for the report: Grad-CAM overlays of test patches per class, correct and wrong
(:mod:`mammo.components.explain.gradcam`), and sliding-window heatmaps of full test images when the
heatmap module and the images are available.

Nothing here imports kfp; the HTML is rendered by :mod:`mammo.components.evaluate.report`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mammo.components.config import CLASS_NAMES, Config, EvaluateConfig
from mammo.components.contracts import (METRICS, MODEL_KERAS, PREDICTIONS, REPORT_HTML, REPORT_JSON, SPLITS_TABLE,
                                        read_report, split_records, write_json, write_report)
from mammo.components.evaluate.metrics import (bootstrap_ci, calibration_report, compute_metrics, nanmean,
                                               rank_auc)

log = logging.getLogger(__name__)

#: subgroup columns and how they are labelled in reports
SUBGROUP_COLUMNS: dict[str, str] = {
    "abnormality_type": "abnormality type",
    "source": "data source",
    "scanner": "scanner",
    "breast_density": "breast density",
    "view": "view",
}

#: a subgroup smaller than this is flagged as too small to read much into
SMALL_SUBGROUP = 30

_VIEW_IN_CASE_ID = re.compile(r"_(CC|MLO)(?:_\d+)?$")

#: (labels, probabilities, per-record ids, uint8 images [n, S, S, 1]) of one split
Predictions = tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray]


# -- subgroups ------------------------------------------------------------------------------------


def sample_attributes(records: pd.DataFrame, splits: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-prediction subgroup attributes.

    ``records`` holds one row per prediction (from the TFRecords: ``patch_id``, ``case_id``,
    ``patient_id``, ``source``, ``label``). Columns of ``splits`` (the balance step's
    ``splits.parquet``) are joined on ``patch_id``: ``scanner`` and, where the manifest carries them,
    ``breast_density``, ``view``, ``abnormality_type``. Missing ones are derived where that is
    exact (abnormality type from the class, view from the case id); otherwise left out.
    """
    out = records.copy()
    if splits is not None and "patch_id" in splits.columns:
        wanted = [c for c in SUBGROUP_COLUMNS if c in splits.columns and c not in out.columns]
        if wanted:
            # oversampling repeats training patches; one row per patch_id is enough for attributes
            extra = splits[["patch_id", *wanted]].drop_duplicates("patch_id")
            out = out.merge(extra, on="patch_id", how="left")
    if "abnormality_type" not in out.columns and "label" in out.columns:
        out["abnormality_type"] = [CLASS_NAMES[int(i)].split("_")[0] for i in out["label"]]
    if "view" not in out.columns and "case_id" in out.columns:
        views = [(m.group(1) if (m := _VIEW_IN_CASE_ID.search(str(c))) else None) for c in out["case_id"]]
        if any(views):
            out["view"] = views
    return out


def subgroup_metrics(y_true: np.ndarray, probs: np.ndarray, attributes: pd.DataFrame,
                     columns: Sequence[str] = tuple(SUBGROUP_COLUMNS)) -> dict[str, dict]:
    """Metrics per value of each subgroup column.

    Per group: ``n``, ``n_patients``, ``accuracy``, ``recall`` (sensitivity of each true class present),
    ``auc`` (one-vs-rest AUC of each class *within the group*, where it has positives and negatives:
    in the ``mass`` group, ``mass_malignant``'s AUC measures benign-vs-malignant discrimination among
    masses) and their mean ``macro_auc``. A column absent from ``attributes`` or without values is
    reported with ``available: false`` and why.
    """
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(axis=1)
    out: dict[str, dict] = {}
    for col in columns:
        if col not in attributes.columns:
            out[col] = {"available": False, "note": f"no {col!r} column in the patch manifest"}
            continue
        values = attributes[col].astype(object).where(attributes[col].notna(), None).to_numpy()
        values = np.array(["unknown" if v is None or str(v) == "" else str(v) for v in values], dtype=object)
        if (values == "unknown").all():
            out[col] = {"available": False, "note": f"{col!r} is empty for every test patch"}
            continue
        groups = []
        for value in sorted(set(values)):
            m = values == value
            yg, pg = y_true[m], probs[m]
            aucs = {name: rank_auc(yg == i, pg[:, i]) for i, name in enumerate(CLASS_NAMES)}
            aucs = {name: a for name, a in aucs.items() if not np.isnan(a)}
            groups.append({
                "value": value,
                "n": int(m.sum()),
                "n_patients": int(attributes.loc[m, "patient_id"].nunique()) if "patient_id" in attributes else None,
                "accuracy": float((pred[m] == yg).mean()),
                "recall": {name: float((pred[m][yg == i] == i).mean()) for i, name in enumerate(CLASS_NAMES)
                           if (yg == i).any()},
                "auc": aucs,
                "macro_auc": nanmean(list(aucs.values())) if aucs else float("nan"),
                "small": bool(m.sum() < SMALL_SUBGROUP),
            })
        out[col] = {"available": True, "groups": groups}
    return out


# -- the step -------------------------------------------------------------------------------------


def read_split(path: Path) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """(true labels, per-record ids, uint8 images ``[n, S, S, 1]``) of every record of a TFRecord file."""
    import tensorflow as tf

    from mammo.components.tfrecords import parse_example

    images, rows = [], []
    for rec in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        ex = parse_example(rec)
        images.append(tf.io.decode_png(ex["image"], channels=1).numpy())
        rows.append({k: ex[k] for k in ("patch_id", "case_id", "patient_id", "source", "label")})
    if not images:
        raise ValueError(f"{path} holds no records")
    records = pd.DataFrame(rows)
    return records["label"].to_numpy(dtype=int), records, np.stack(images)


def predict_split(model, path: Path, batch_size: int = 64) -> Predictions:
    """(true labels, probabilities, per-record ids, images) of every record of a TFRecord file."""
    y, records, x = read_split(path)
    probs = np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0), dtype=float)
    return y, probs, records, x


def evaluate_predictions(predictions: dict[str, tuple], cfg: EvaluateConfig, seed: int,
                         splits: pd.DataFrame | None = None) -> dict:
    """Metrics and patient-level bootstrap intervals of every split; the test split's subgroups and calibration.

    ``predictions`` maps a split to ``(y, probs, records[, images])``.
    """
    result: dict = {}
    for split, (y, probs, records, *_) in predictions.items():
        m = asdict(compute_metrics(y, probs, cfg.specificities, cfg.calibration_bins))
        m["n_patients"] = int(records["patient_id"].nunique())
        for note in m["undefined_auc"]:
            log.warning("%s: %s", split, note)
        m["ci"] = bootstrap_ci(y, probs, records["patient_id"].to_numpy(), cfg.bootstrap_resamples, seed, cfg.ci_level)
        result[split] = m
    y_test, p_test, rec_test, *_ = predictions["test"]
    result["test"]["subgroups"] = subgroup_metrics(y_test, p_test, sample_attributes(rec_test, splits))
    if cfg.temperature_scaling and "validation" in predictions:
        y_val, p_val, *_ = predictions["validation"]
        result["calibration"] = calibration_report(y_val, p_val, y_test, p_test, cfg.calibration_bins)
    return result


def run(model: str | Path, dataset: str | Path, evaluation: str | Path, cfg: Config, backbone: str | None = None,
        report_html: str | Path | None = None, cases: str | Path | None = None) -> dict:
    """The evaluate step: metrics of the model in ``model`` on ``dataset``'s validation and test splits.

    Writes into ``evaluation``: ``metrics.json`` (read by the gate), ``report.json`` (the same record,
    tagged ``step: evaluate``), ``predictions.parquet`` (split, patch / case / patient id, true label,
    probabilities; the gate's paired champion comparison reads the test rows) and the HTML report
    (also copied to ``report_html`` when given). ``backbone`` defaults to the train report's.
    With ``cases`` (ingest's output) the report also shows heatmaps of a few full test images.
    """
    import keras

    from mammo.components.evaluate.report import render_html
    from mammo.components.evaluate.shortcut import compare_with_model, shortcut_audit

    model, dataset, out = Path(model), Path(dataset), Path(evaluation)
    out.mkdir(parents=True, exist_ok=True)
    ecfg = cfg.evaluate
    train_report = read_report(model) if (model / REPORT_JSON).is_file() else {}
    backbone = backbone or train_report.get("backbone")
    if not backbone:
        raise ValueError(f"{model / REPORT_JSON}: no 'backbone' recorded and none given")
    net = keras.models.load_model(model / MODEL_KERAS)
    predictions = {split: predict_split(net, dataset / split_records(split)) for split in ("validation", "test")}
    splits_path = dataset / SPLITS_TABLE
    splits = pd.read_parquet(splits_path) if splits_path.is_file() else None
    if splits is None:
        log.warning("%s not found: subgroups and the shortcut audit limited to what the TFRecords carry", splits_path)
    result: dict = {"step": "evaluate", "backbone": backbone, "model_path": str(model / MODEL_KERAS),
                    **evaluate_predictions(predictions, ecfg, cfg.seed, splits), "config": asdict(ecfg)}
    result["shortcut_audit"] = compare_with_model(
        shortcut_audit(_audit_table(splits, predictions), ecfg.shortcut_folds, cfg.seed), result["test"]["macro_auc"])
    for split in ("validation", "test"):
        m = result[split]
        log.info("%s %s: n=%d accuracy %.4f macro AUC %.4f macro F1 %.4f ECE %.4f", backbone, split, m["n"],
                 m["accuracy"], m["macro_auc"], m["macro_f1"], m["ece"])
    if train_report:
        result["train"] = {k: train_report.get(k) for k in ("seconds", "epochs_per_stage", "input_size", "batch_size",
                                                              "preprocessing", "weights", "images_per_second")}
    explanations = _explanations(net, predictions["test"], cfg, cases)
    result["explanations"] = {k: v for k, v in explanations.items() if k != "figures"}
    write_json(out / METRICS, result)
    write_report(out, "evaluate", result)
    page = render_html(result, explanations.get("figures"))
    (out / REPORT_HTML).write_text(page)
    if report_html is not None:
        Path(report_html).write_text(page)
    _write_predictions(predictions, out / PREDICTIONS)
    return result


def _audit_table(splits: pd.DataFrame | None, predictions: dict[str, Predictions]) -> pd.DataFrame:
    """The patches the shortcut audit learns from: the whole splits table (every split) when it has
    patient ids and labels, else the evaluated records with whatever columns the table adds."""
    if splits is not None and {"patch_id", "patient_id"} <= set(splits.columns) and (
            {"label_index", "label"} & set(splits.columns)):
        return splits
    records = pd.concat([p[2] for p in predictions.values()], ignore_index=True)
    return sample_attributes(records, splits) if splits is not None else records


def _explanations(net, test: Predictions, cfg: Config, cases: str | Path | None) -> dict:
    """Grad-CAM overlays of test patches and heatmaps of full test images for the report.

    Returns the summaries stored in ``metrics.json`` and, under ``figures``, the images (not stored).
    """
    from mammo.components.explain.gradcam import gradcam_gallery

    y, probs, records, images = test
    out: dict = {"figures": {}}
    try:
        figures = gradcam_gallery(net, images, y, probs, records["patch_id"].tolist(), cfg.evaluate.gradcam_per_class,
                                  cfg.seed)
        out["gradcam"] = {"available": bool(figures), "n": len(figures), "method": "Grad-CAM (Selvaraju et al. 2017)"}
        out["figures"]["gradcam"] = figures
    except ValueError as exc:  # e.g. a model without a spatial layer
        log.warning("no Grad-CAM overlays: %s", exc)
        out["gradcam"] = {"available": False, "note": str(exc)}
    if cases is None or cfg.evaluate.heatmap_images_per_class <= 0:
        out["heatmaps"] = {"available": False, "note": "no cases input (ingest's output) or "
                                                       "evaluate.heatmap_images_per_class is 0"}
        return out
    from mammo.components.contracts import read_cases
    from mammo.components.evaluate.heatmaps import heatmap_gallery

    size = int(net.input_shape[1])

    def predict_fn(windows: np.ndarray) -> np.ndarray:
        return np.asarray(net.predict(windows[..., np.newaxis].astype(np.float32), verbose=0), dtype=np.float32)

    summary, figures = heatmap_gallery(predict_fn, size, read_cases(cases), set(records["case_id"].astype(str)), cfg)
    out["heatmaps"] = summary
    out["figures"]["heatmaps"] = {"images": figures, "localisation": summary["localisation"], "note": summary["note"]}
    return out


def _write_predictions(predictions: dict[str, Predictions], path: Path) -> None:
    frames = []
    for split, (_y, probs, records, *_) in predictions.items():
        f = records.copy()
        f.insert(0, "split", split)
        for i, name in enumerate(CLASS_NAMES):
            f[f"p_{name}"] = probs[:, i]
        frames.append(f)
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
