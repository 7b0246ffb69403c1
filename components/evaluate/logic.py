"""Evaluation: the paper's metrics of one trained model, how certain they are, and whether its
probabilities mean what they say.

For each split (validation, test):

* **The paper's metrics** (Tiryaki 2023): per class sensitivity ``TP / (TP + FN)``, specificity
  ``TN / (TN + FP)``, precision and F-measure ``2 P R / (P + R)``; one-vs-rest ROC and AUC per
  class; macro AUC (mean of the per-class AUCs); accuracy; the confusion matrix (rows = true,
  columns = predicted) in the paper's class order BC, MC, BM, MM, N (``CLASS_NAMES``).
* **Operating points**: each class's sensitivity at fixed specificities (0.90, 0.95 by default),
  with the score threshold that achieves it.
* **Calibration**: expected calibration error (ECE, equal-width bins of the top-class confidence)
  with the reliability-diagram bins, negative log-likelihood and the multi-class Brier score.

On the test split only (the numbers the gate uses):

* **Uncertainty**: patient-level bootstrap confidence intervals of accuracy, macro AUC and each
  class's AUC. Patients, not patches, are resampled, because the CC and MLO patches of one lesion
  (and the several patches of one normal image) are not independent: a patch-level bootstrap would
  give intervals that are too narrow.
* **Subgroups**: metrics by abnormality type, data source, scanner, breast density and view
  (columns joined from the balance step's ``splits.parquet``; the view is parsed from the case id
  when the manifest lacks it; a subgroup column that is not available is reported as such).
* **Temperature scaling** (optional): one softmax temperature fitted on the validation split by
  minimising the negative log-likelihood; the test ECE / NLL before and after are reported and the
  temperature is stored with the selected model. All other metrics are those of the raw outputs,
  which is what deploy serves.

Nothing here imports kfp; the HTML rendering lives in :mod:`mammo.components.evaluate.report`.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mammo.components.config import CLASS_NAMES, EvaluateConfig

log = logging.getLogger(__name__)

#: the paper's abbreviations, in ``CLASS_NAMES`` order
CLASS_ABBREVIATIONS: dict[str, str] = dict(zip(CLASS_NAMES, ("BC", "MC", "BM", "MM", "N")))

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


@dataclass
class SplitMetrics:
    """Point estimates of one split (see the module docstring for the definitions)."""

    n: int
    accuracy: float
    macro_auc: float
    macro_f1: float
    per_class: dict[str, dict] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    roc: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # class -> fpr/tpr/thresholds
    micro_roc: dict[str, list[float]] = field(default_factory=dict)  # all classes pooled (one-vs-rest)
    ece: float = float("nan")
    nll: float = float("nan")
    brier: float = float("nan")
    reliability: list[dict] = field(default_factory=list)  # one dict per confidence bin


# -- the paper's metrics --------------------------------------------------------------------------


def confusion_counts(cm: np.ndarray, i: int) -> tuple[int, int, int, int]:
    """(TP, FN, FP, TN) of class ``i`` from a confusion matrix (rows true, columns predicted)."""
    tp = int(cm[i, i])
    fn = int(cm[i].sum()) - tp
    fp = int(cm[:, i].sum()) - tp
    tn = int(cm.sum()) - tp - fn - fp
    return tp, fn, fp, tn


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); NaN without both classes.

    Equal to ``sklearn.metrics.roc_auc_score`` and fast enough to run thousands of times in the
    bootstrap.
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def sensitivity_at_specificity(positive: np.ndarray, scores: np.ndarray, specificity: float) -> dict:
    """The highest sensitivity whose specificity is at least ``specificity``.

    A sample is called positive when its score is >= the threshold. Returns ``sensitivity``, the
    ``specificity`` actually reached and the ``threshold`` (None when only "call nothing positive"
    reaches the specificity); NaNs without positives or negatives.
    """
    from sklearn.metrics import roc_curve

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return {"sensitivity": float("nan"), "specificity": float("nan"), "threshold": None}
    fpr, tpr, thr = roc_curve(positive, scores, drop_intermediate=False)
    allowed = fpr <= 1.0 - specificity + 1e-12
    # among the allowed points take the highest TPR; at equal TPR the lowest FPR (the first one)
    best = int(np.flatnonzero(allowed)[np.argmax(tpr[allowed])])
    threshold = float(thr[best]) if np.isfinite(thr[best]) else None
    return {"sensitivity": float(tpr[best]), "specificity": float(1.0 - fpr[best]), "threshold": threshold}


def _thin(n: int, points: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))


def _finite(values: np.ndarray, upper: float = 1.0) -> list[float]:
    # roc_curve's first threshold is +inf ("call nothing positive"); JSON and KFP need finite numbers
    return np.nan_to_num(np.asarray(values, dtype=float), posinf=upper, neginf=0.0).tolist()


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, specificities: Sequence[float] = (0.90, 0.95),
                    calibration_bins: int = 15, roc_points: int = 50) -> SplitMetrics:
    """All point-estimate metrics from true class indices and predicted class probabilities."""
    from sklearn.metrics import confusion_matrix, roc_curve

    k = len(CLASS_NAMES)
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape != (len(y_true), k):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(y_true)} labels x {k} classes")
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(k)))
    per_class, aucs, f1s, roc = {}, [], [], {}
    for i, name in enumerate(CLASS_NAMES):
        tp, fn, fp, tn = confusion_counts(cm, i)
        sens = tp / (tp + fn) if tp + fn else float("nan")
        spec = tn / (tn + fp) if tn + fp else float("nan")
        prec = tp / (tp + fp) if tp + fp else 0.0
        f1 = 2 * prec * sens / (prec + sens) if not np.isnan(sens) and prec + sens > 0 else 0.0
        positives = y_true == i
        auc = rank_auc(positives, probs[:, i])
        if not np.isnan(auc):
            fpr, tpr, thr = roc_curve(positives, probs[:, i])
            pick = _thin(len(fpr), roc_points)
            roc[name] = {"fpr": fpr[pick].tolist(), "tpr": tpr[pick].tolist(), "thresholds": _finite(thr[pick])}
        per_class[name] = {
            "sensitivity": float(sens), "specificity": float(spec), "precision": float(prec), "f1": float(f1),
            "auc": auc, "support": int(cm[i].sum()),
            "sensitivity_at_specificity": {f"{s:.2f}": sensitivity_at_specificity(positives, probs[:, i], s)
                                           for s in specificities},
        }
        aucs.append(auc)
        f1s.append(f1)
    total = int(cm.sum())
    ece, bins = expected_calibration_error(y_true, probs, calibration_bins)
    return SplitMetrics(
        n=total,
        accuracy=float(np.trace(cm) / total) if total else float("nan"),
        macro_auc=_nanmean(aucs),
        macro_f1=float(np.mean(f1s)),
        per_class=per_class,
        confusion_matrix=cm.astype(int).tolist(),
        roc=roc,
        micro_roc=micro_average_roc(y_true, probs, roc_points),
        ece=ece,
        nll=negative_log_likelihood(y_true, probs),
        brier=brier_score(y_true, probs),
        reliability=bins,
    )


def micro_average_roc(y_true: np.ndarray, probs: np.ndarray, roc_points: int = 50) -> dict[str, list[float]]:
    """One ROC curve of all classes pooled (every (sample, class) pair is one one-vs-rest decision).

    Unlike a macro average it has real thresholds, which the KFP UI's ROC view needs.
    """
    from sklearn.metrics import roc_curve

    onehot = np.eye(probs.shape[1], dtype=bool)[np.asarray(y_true, dtype=int)]
    if onehot.all() or not onehot.any():
        return {}
    fpr, tpr, thr = roc_curve(onehot.ravel(), np.asarray(probs, dtype=float).ravel())
    pick = _thin(len(fpr), roc_points)
    return {"fpr": fpr[pick].tolist(), "tpr": tpr[pick].tolist(), "thresholds": _finite(thr[pick])}


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


# -- calibration ----------------------------------------------------------------------------------


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """ECE of the top-class confidence and the reliability-diagram bins.

    Bin ``b`` (0-based) holds confidences in ``(b / n_bins, (b + 1) / n_bins]`` (the first bin also
    holds 0). ECE = sum over bins of ``count / N * |accuracy - mean confidence|``.
    """
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if len(y_true) == 0:
        return float("nan"), []
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = idx == b
        count = int(members.sum())
        if not count:
            continue
        acc, mean_conf = float(correct[members].mean()), float(conf[members].mean())
        ece += count / len(y_true) * abs(acc - mean_conf)
        bins.append({"low": b / n_bins, "high": (b + 1) / n_bins, "count": count, "confidence": mean_conf,
                     "accuracy": acc})
    return float(ece), bins


def negative_log_likelihood(y_true: np.ndarray, probs: np.ndarray, eps: float = 1e-12) -> float:
    """Mean ``-log p(true class)`` (probabilities clipped at ``eps``)."""
    y_true = np.asarray(y_true, dtype=int)
    if len(y_true) == 0:
        return float("nan")
    p = np.clip(np.asarray(probs, dtype=float)[np.arange(len(y_true)), y_true], eps, 1.0)
    return float(-np.log(p).mean())


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of ``sum_k (p_k - [y = k])^2`` (0 best, 2 worst)."""
    y_true = np.asarray(y_true, dtype=int)
    if len(y_true) == 0:
        return float("nan")
    probs = np.asarray(probs, dtype=float)
    onehot = np.eye(probs.shape[1])[y_true]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float, eps: float = 1e-12) -> np.ndarray:
    """``softmax(log p / T)``: the model's softmax with its logits divided by ``T``.

    ``log p`` differs from the model's logits by a per-sample constant, which softmax ignores.
    """
    return _softmax(np.log(np.clip(np.asarray(probs, dtype=float), eps, 1.0)) / float(temperature))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the negative log-likelihood of ``probs`` (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true, dtype=int)
    if len(y_true) == 0:
        raise ValueError("cannot fit a temperature on an empty split")
    res = minimize_scalar(lambda log_t: negative_log_likelihood(y_true, apply_temperature(probs, np.exp(log_t))),
                          bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def calibration_report(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
                       n_bins: int = 15) -> dict:
    """Temperature fitted on validation; test ECE / NLL / Brier before and after, reliability bins after."""
    t = fit_temperature(y_val, p_val)
    scaled = apply_temperature(p_test, t)
    ece_after, bins_after = expected_calibration_error(y_test, scaled, n_bins)
    return {
        "method": "temperature scaling fitted on validation (minimum NLL)",
        "temperature": t,
        "validation_nll_before": negative_log_likelihood(y_val, p_val),
        "validation_nll_after": negative_log_likelihood(y_val, apply_temperature(p_val, t)),
        "test_ece_before": expected_calibration_error(y_test, p_test, n_bins)[0],
        "test_ece_after": ece_after,
        "test_nll_before": negative_log_likelihood(y_test, p_test),
        "test_nll_after": negative_log_likelihood(y_test, scaled),
        "test_brier_before": brier_score(y_test, p_test),
        "test_brier_after": brier_score(y_test, scaled),
        "test_reliability_after": bins_after,
    }


# -- uncertainty ----------------------------------------------------------------------------------


def weighted_aucs(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` under each row of ``weights`` (an (R, n) matrix of sample multiplicities).

    With integer weights this is the AUC of the sample in which sample j appears ``weights[r, j]``
    times (ties count one half), computed for all R rows at once from one sort. NaN where a row has
    no positive or no negative weight.
    """
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="mergesort")
    s, pos, w = np.asarray(scores)[order], positive[order], np.atleast_2d(weights)[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of tied scores
    wp = np.add.reduceat(w * pos, starts, axis=1)
    wn = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(wn, axis=1) - wn
    num = (wp * (neg_below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, groups: Sequence[str], n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95, chunk: int = 250) -> dict:
    """Patient-level percentile bootstrap intervals of accuracy, macro AUC and per-class AUC.

    Each resample draws as many patients as there are, with replacement, and keeps all patches of
    every drawn patient (as often as the patient was drawn). A class whose AUC is undefined in a
    resample (no positives or no negatives) is left out of that resample's macro AUC, as in the
    point estimate. Resamples are evaluated ``chunk`` at a time as weight matrices. Returns ``{}``
    when ``n_resamples`` is 0.
    """
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    groups = np.asarray(groups)
    if len(groups) != len(y_true):
        raise ValueError(f"{len(groups)} patient ids for {len(y_true)} predictions")
    if n_resamples <= 0 or len(y_true) == 0:
        return {}
    patients, patient_of = np.unique(groups, return_inverse=True)
    n_p = len(patients)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    rng = np.random.default_rng(seed)
    k = len(CLASS_NAMES)
    acc = np.empty(n_resamples)
    aucs = np.empty((n_resamples, k))
    for lo in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - lo)
        draws = rng.integers(0, n_p, (r, n_p)) + n_p * np.arange(r)[:, None]
        counts = np.bincount(draws.ravel(), minlength=r * n_p).reshape(r, n_p)
        weights = counts[:, patient_of].astype(float)  # every patch of a patient drawn c times counts c times
        acc[lo:lo + r] = weights @ correct / weights.sum(axis=1)
        for i in range(k):
            aucs[lo:lo + r, i] = weighted_aucs(y_true == i, probs[:, i], weights)
    with warnings.catch_warnings():  # an all-NaN row ("Mean of empty slice") is expected and handled
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = np.nanmean(aucs, axis=1)
    tail = (1.0 - level) / 2.0 * 100.0

    def interval(values: np.ndarray) -> list[float]:
        values = values[np.isfinite(values)]
        if not len(values):
            return [float("nan"), float("nan")]
        return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]

    return {
        "method": "patient-level percentile bootstrap",
        "level": level,
        "n_resamples": int(n_resamples),
        "n_patients": int(n_p),
        "seed": int(seed),
        "accuracy": interval(acc),
        "macro_auc": interval(macro),
        "per_class_auc": {name: interval(aucs[:, i]) for i, name in enumerate(CLASS_NAMES)},
        "macro_auc_undefined_resamples": int((~np.isfinite(macro)).sum()),
    }


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
                "macro_auc": _nanmean(list(aucs.values())) if aucs else float("nan"),
                "small": bool(m.sum() < SMALL_SUBGROUP),
            })
        out[col] = {"available": True, "groups": groups}
    return out


# -- the step -------------------------------------------------------------------------------------


def predict_split(model, path: Path, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(true labels, probabilities, per-record ids) of every record of a TFRecord file."""
    import tensorflow as tf

    from mammo.components.tfrecords import parse_example

    images, rows = [], []
    for rec in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        ex = parse_example(rec)
        images.append(tf.io.decode_png(ex["image"], channels=1).numpy())
        rows.append({k: ex[k] for k in ("patch_id", "case_id", "patient_id", "source", "label")})
    if not images:
        raise ValueError(f"{path} holds no records")
    x = np.stack(images).astype(np.float32)
    probs = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=float)
    records = pd.DataFrame(rows)
    return records["label"].to_numpy(dtype=int), probs, records


def evaluate_predictions(predictions: dict[str, tuple[np.ndarray, np.ndarray, pd.DataFrame]],
                         cfg: EvaluateConfig, seed: int, splits: pd.DataFrame | None = None) -> dict:
    """Everything of :func:`evaluate_model` from predictions (``split -> (y, probs, records)``)."""
    result: dict = {}
    for split, (y, probs, records) in predictions.items():
        m = asdict(compute_metrics(y, probs, cfg.specificities, cfg.calibration_bins))
        m["n_patients"] = int(records["patient_id"].nunique())
        result[split] = m
    y_test, p_test, rec_test = predictions["test"]
    result["test"]["ci"] = bootstrap_ci(y_test, p_test, rec_test["patient_id"].to_numpy(), cfg.bootstrap_resamples,
                                        seed, cfg.ci_level)
    result["test"]["subgroups"] = subgroup_metrics(y_test, p_test, sample_attributes(rec_test, splits))
    if cfg.temperature_scaling and "validation" in predictions:
        y_val, p_val, _ = predictions["validation"]
        result["calibration"] = calibration_report(y_val, p_val, y_test, p_test, cfg.calibration_bins)
    return result


def evaluate_model(model_path: str | Path, dataset_dir: str | Path, out_dir: str | Path, backbone: str,
                   train_report: dict | None = None, cfg: EvaluateConfig | None = None, seed: int = 0) -> dict:
    """Metrics on validation and test of one trained model.

    Writes ``metrics.json`` (= ``report.json``, read by the gate and the run summary),
    ``report.html`` and ``predictions.parquet`` (split, patch / case / patient id, true label,
    probabilities) into ``out_dir``.
    """
    import keras

    from mammo.components.evaluate.report import render_html

    cfg = cfg or EvaluateConfig()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = keras.models.load_model(model_path)
    predictions = {split: predict_split(model, dataset_dir / f"{split}.tfrecord") for split in ("validation", "test")}
    splits_path = dataset_dir / "splits.parquet"
    splits = pd.read_parquet(splits_path) if splits_path.is_file() else None
    if splits is None:
        log.warning("%s not found: subgroups limited to what the TFRecords carry", splits_path)
    result: dict = {"step": "evaluate", "backbone": backbone, "model_path": str(model_path),
                    **evaluate_predictions(predictions, cfg, seed, splits), "config": asdict(cfg)}
    for split in ("validation", "test"):
        m = result[split]
        log.info("%s %s: n=%d accuracy %.4f macro AUC %.4f macro F1 %.4f ECE %.4f", backbone, split, m["n"],
                 m["accuracy"], m["macro_auc"], m["macro_f1"], m["ece"])
    if result["test"]["ci"]:
        ci = result["test"]["ci"]
        log.info("%s test %.0f%% CI (%d patients, %d resamples): accuracy [%.4f, %.4f], macro AUC [%.4f, %.4f]",
                 backbone, 100 * ci["level"], ci["n_patients"], ci["n_resamples"], *ci["accuracy"], *ci["macro_auc"])
    if train_report:
        result["train"] = {k: train_report.get(k) for k in ("seconds", "epochs_per_stage", "input_size", "batch_size",
                                                              "preprocessing", "weights", "images_per_second")}
    text = json.dumps(result, indent=2)
    (out_dir / "metrics.json").write_text(text)
    (out_dir / "report.json").write_text(text)
    (out_dir / "report.html").write_text(render_html(result))
    _write_predictions(predictions, out_dir / "predictions.parquet")
    return result


def _write_predictions(predictions: dict[str, tuple[np.ndarray, np.ndarray, pd.DataFrame]], path: Path) -> None:
    frames = []
    for split, (_y, probs, records) in predictions.items():
        f = records.copy()
        f.insert(0, "split", split)
        for i, name in enumerate(CLASS_NAMES):
            f[f"p_{name}"] = probs[:, i]
        frames.append(f)
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
