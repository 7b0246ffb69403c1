"""The numbers of an evaluation: the paper's point metrics, calibration and patient-level bootstrap.

* **The paper's metrics** (Tiryaki 2023), computed with scikit-learn where its definition is the
  paper's: per class sensitivity (recall) ``TP / (TP + FN)``, specificity ``TN / (TN + FP)``,
  precision and F-measure ``2 P R / (P + R)``; one-vs-rest ROC and AUC per class; macro AUC (the
  mean of the defined per-class AUCs); accuracy; the confusion matrix (rows true, columns
  predicted) in ``CLASS_NAMES`` order. A class absent from the split (or the only class in it) has
  no AUC: the metrics say so (``auc_undefined``) instead of silently averaging fewer classes.
* **Operating points**: each class's sensitivity at fixed specificities with the threshold.
* **Calibration**: expected calibration error (equal-width bins of the top-class confidence) with
  the reliability bins, negative log-likelihood, multi-class Brier score, temperature scaling.
* **Uncertainty**: patient-level percentile bootstrap (patients, not patches, are resampled: the CC
  and MLO patches of one lesion are not independent), computed with weighted AUCs so that thousands
  of resamples stay cheap; and the *paired* bootstrap of the difference between two models scored
  on the same patches (the gate's challenger-versus-champion comparison).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from mammo.components.config import CLASS_NAMES


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
    #: one sentence per class whose AUC is undefined on this split (absent, or the only class)
    undefined_auc: list[str] = field(default_factory=list)
    #: share of the patches predicted as each class (a collapsed model puts ~all in one)
    predicted_fraction: dict[str, float] = field(default_factory=dict)


# -- the paper's metrics --------------------------------------------------------------------------


def rank_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); NaN without both classes.

    Equal to ``sklearn.metrics.roc_auc_score`` where that is defined (sklearn raises otherwise).
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean of the defined one-vs-rest AUCs (NaN when none is defined)."""
    y_true = np.asarray(y_true, dtype=int)
    return nanmean([rank_auc(y_true == i, probs[:, i]) for i in range(probs.shape[1])])


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


def _undefined_auc_reason(name: str, n_pos: int, n: int) -> str | None:
    if n_pos == 0:
        return f"AUC of {name} undefined: no {name} patch in this split"
    if n_pos == n:
        return f"AUC of {name} undefined: every patch of this split is {name}"
    return None


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, specificities: Sequence[float] = (0.90, 0.95),
                    calibration_bins: int = 15, roc_points: int = 50) -> SplitMetrics:
    """All point-estimate metrics from true class indices and predicted class probabilities."""
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, multilabel_confusion_matrix,
                                 precision_score, recall_score, roc_auc_score, roc_curve)

    k = len(CLASS_NAMES)
    labels = list(range(k))
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape != (len(y_true), k):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(y_true)} labels x {k} classes")
    y_pred = probs.argmax(axis=1)
    total = len(y_true)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    if total:
        recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
        precision = precision_score(y_true, y_pred, labels=labels, average=None, zero_division=0.0)
        f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0.0)
    else:
        recall, precision, f1 = np.full(k, np.nan), np.zeros(k), np.zeros(k)
    per_class, aucs, roc, undefined = {}, [], {}, []
    for i, name in enumerate(CLASS_NAMES):
        (tn, fp), (_fn, _tp) = multilabel_confusion_matrix(y_true, y_pred, labels=labels)[i] if total else ((0, 0), (0, 0))
        positives = y_true == i
        reason = _undefined_auc_reason(name, int(positives.sum()), total)
        auc = float("nan") if reason else float(roc_auc_score(positives, probs[:, i]))
        if reason:
            undefined.append(reason)
        else:
            fpr, tpr, thr = roc_curve(positives, probs[:, i])
            pick = _thin(len(fpr), roc_points)
            roc[name] = {"fpr": fpr[pick].tolist(), "tpr": tpr[pick].tolist(), "thresholds": _finite(thr[pick])}
        per_class[name] = {
            "sensitivity": float(recall[i]), "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
            "precision": float(precision[i]), "f1": float(f1[i]), "auc": auc, "support": int(cm[i].sum()),
            "sensitivity_at_specificity": {f"{s:.2f}": sensitivity_at_specificity(positives, probs[:, i], s)
                                           for s in specificities},
            **({"auc_undefined": reason} if reason else {}),
        }
        aucs.append(auc)
    ece, bins = expected_calibration_error(y_true, probs, calibration_bins)
    return SplitMetrics(
        n=total,
        accuracy=float(accuracy_score(y_true, y_pred)) if total else float("nan"),
        macro_auc=nanmean(aucs),
        macro_f1=float(np.mean(f1)),
        per_class=per_class,
        confusion_matrix=cm.astype(int).tolist(),
        roc=roc,
        micro_roc=micro_average_roc(y_true, probs, roc_points),
        ece=ece,
        nll=negative_log_likelihood(y_true, probs),
        brier=brier_score(y_true, probs),
        reliability=bins,
        undefined_auc=undefined,
        predicted_fraction={name: float((y_pred == i).mean()) if total else 0.0 for i, name in enumerate(CLASS_NAMES)},
    )


def micro_average_roc(y_true: np.ndarray, probs: np.ndarray, roc_points: int = 50) -> dict[str, list[float]]:
    """One ROC curve of all classes pooled (every (sample, class) pair is one one-vs-rest decision).

    Unlike a macro average it has real thresholds, which the KFP UI's ROC view needs.
    """
    from sklearn.metrics import roc_curve

    if len(y_true) == 0:
        return {}
    onehot = np.eye(probs.shape[1], dtype=bool)[np.asarray(y_true, dtype=int)]
    fpr, tpr, thr = roc_curve(onehot.ravel(), np.asarray(probs, dtype=float).ravel())
    pick = _thin(len(fpr), roc_points)
    return {"fpr": fpr[pick].tolist(), "tpr": tpr[pick].tolist(), "thresholds": _finite(thr[pick])}


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there is none."""
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


def patient_weights(groups: Sequence, n_resamples: int, seed: int, chunk: int = 250) -> Iterator[np.ndarray]:
    """Patient-level bootstrap resamples as (r, n) weight matrices, ``chunk`` resamples at a time.

    Each resample draws as many patients as there are, with replacement; every patch of a patient
    drawn c times gets weight c.
    """
    _, patient_of = np.unique(np.asarray(groups), return_inverse=True)
    n_p = int(patient_of.max()) + 1 if len(patient_of) else 0
    rng = np.random.default_rng(seed)
    for lo in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - lo)
        draws = rng.integers(0, n_p, (r, n_p)) + n_p * np.arange(r)[:, None]
        counts = np.bincount(draws.ravel(), minlength=r * n_p).reshape(r, n_p)
        yield counts[:, patient_of].astype(float)


def _resampled(y_true: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, per-class AUCs) of each weight row."""
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    acc = weights @ correct / weights.sum(axis=1)
    aucs = np.stack([weighted_aucs(y_true == i, probs[:, i], weights) for i in range(probs.shape[1])], axis=1)
    return acc, aucs


def _resampled_rates(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-class sensitivity, specificity and F1 of each weight row, each (R, k); NaN where a rate is 0/0.

    The same definitions as :func:`compute_metrics` (F1 of a class never predicted nor present is 0).
    """
    tp, fn, fp, tn = (np.empty((weights.shape[0], k)) for _ in range(4))
    for i in range(k):
        pos, hit = y_true == i, y_pred == i
        tp[:, i], fn[:, i] = weights @ (pos & hit), weights @ (pos & ~hit)
        fp[:, i], tn[:, i] = weights @ (~pos & hit), weights @ (~pos & ~hit)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_den = 2 * tp + fp + fn
        return {"sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                "f1": np.where(f1_den > 0, 2 * tp / np.where(f1_den > 0, f1_den, 1), 0.0)}


def _row_nanmean(aucs: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # an all-NaN row ("Mean of empty slice") is expected and handled
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(aucs, axis=1)


def _interval(values: np.ndarray, level: float) -> list[float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    tail = (1.0 - level) / 2.0 * 100.0
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, groups: Sequence[str], n_resamples: int = 1000,
                 seed: int = 0, level: float = 0.95, chunk: int = 250) -> dict:
    """Patient-level percentile bootstrap intervals of every figure the reports and the model card show:
    accuracy, macro AUC, macro F1 and per class AUC, sensitivity, specificity and F1.

    A class whose AUC is undefined in a resample (no positives or no negatives) is left out of that
    resample's macro AUC, as in the point estimate; a rate that is 0/0 in a resample is left out of
    its interval. Returns ``{}`` when ``n_resamples`` is 0.
    """
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if len(groups) != len(y_true):
        raise ValueError(f"{len(groups)} patient ids for {len(y_true)} predictions")
    if n_resamples <= 0 or len(y_true) == 0:
        return {}
    k, y_pred = probs.shape[1], probs.argmax(axis=1)
    acc, aucs, rates = [], [], []
    for weights in patient_weights(groups, n_resamples, seed, chunk):
        a, u = _resampled(y_true, probs, weights)
        acc.append(a)
        aucs.append(u)
        rates.append(_resampled_rates(y_true, y_pred, weights, k))
    acc, aucs = np.concatenate(acc), np.concatenate(aucs)
    per_class = {rate: np.concatenate([r[rate] for r in rates]) for rate in ("sensitivity", "specificity", "f1")}
    macro = _row_nanmean(aucs)
    return {
        "method": "patient-level percentile bootstrap",
        "level": level,
        "n_resamples": int(n_resamples),
        "n_patients": int(len(np.unique(np.asarray(groups)))),
        "seed": int(seed),
        "accuracy": _interval(acc, level),
        "macro_auc": _interval(macro, level),
        "macro_f1": _interval(per_class["f1"].mean(axis=1), level),
        "per_class_auc": {name: _interval(aucs[:, i], level) for i, name in enumerate(CLASS_NAMES)},
        **{f"per_class_{rate}": {name: _interval(values[:, i], level) for i, name in enumerate(CLASS_NAMES)}
           for rate, values in per_class.items()},
        "macro_auc_undefined_resamples": int((~np.isfinite(macro)).sum()),
    }


#: the metrics :func:`paired_bootstrap_difference` can compare
PAIRED_METRICS = ("macro_auc", "accuracy")


def paired_bootstrap_difference(y_true: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, groups: Sequence,
                                metric: str = "macro_auc", n_resamples: int = 1000, seed: int = 0,
                                level: float = 0.95, chunk: int = 250) -> dict:
    """Paired patient-level bootstrap of ``metric(a) - metric(b)`` on the same patches.

    Both models are evaluated on the *same* resample each time, so what the patients have in common
    (easy and hard cases) cancels and the interval of the difference is much narrower than the two
    separate intervals suggest. Returns both point values, the difference and its percentile interval.
    """
    if metric not in PAIRED_METRICS:
        raise ValueError(f"paired comparison of {metric!r} is not supported; choose one of {PAIRED_METRICS}")
    y_true = np.asarray(y_true, dtype=int)
    probs_a, probs_b = np.asarray(probs_a, dtype=float), np.asarray(probs_b, dtype=float)
    if not (probs_a.shape == probs_b.shape == (len(y_true), probs_a.shape[1])) or len(groups) != len(y_true):
        raise ValueError(f"paired comparison needs the same patches: {probs_a.shape}, {probs_b.shape}, "
                         f"{len(y_true)} labels, {len(groups)} patient ids")

    def point(p: np.ndarray) -> float:
        return macro_auc(y_true, p) if metric == "macro_auc" else float((p.argmax(axis=1) == y_true).mean())

    diffs = []
    for weights in patient_weights(groups, max(0, n_resamples), seed, chunk):
        (acc_a, auc_a), (acc_b, auc_b) = _resampled(y_true, probs_a, weights), _resampled(y_true, probs_b, weights)
        diffs.append(_row_nanmean(auc_a) - _row_nanmean(auc_b) if metric == "macro_auc" else acc_a - acc_b)
    a, b = point(probs_a), point(probs_b)
    return {
        "method": "paired patient-level percentile bootstrap",
        "metric": metric,
        "level": level,
        "n_resamples": int(n_resamples),
        "n_patients": int(len(np.unique(np.asarray(groups)))),
        "n": int(len(y_true)),
        "seed": int(seed),
        "a": a,
        "b": b,
        "difference": a - b,
        "interval": _interval(np.concatenate(diffs), level) if diffs else [float("nan"), float("nan")],
    }
