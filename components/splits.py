"""The patient-grouped train / validation split, shared by ingest (``subset``) and balance.

The CC and MLO rows of one breast show the same lesion, so rows are split by patient, never by
row: the official training rows are divided into ``train`` / ``validation`` by patient, stratified
by class with ``StratifiedGroupKFold`` (one fold of ``round(1 / validation_fraction)``); with too
few patients per class the split falls back to a seeded patient hash. Official test rows stay
``test``.
"""

from __future__ import annotations

import hashlib
import warnings

import pandas as pd


def stable_fraction(key: str) -> float:
    """A number in [0, 1] fixed by ``key`` (same on every run and machine): seeded patient hashing."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def patient_split(rows: pd.DataFrame, validation_fraction: float, seed: int) -> pd.Series:
    """``train`` / ``validation`` / ``test`` per row (needs ``split``, ``patient_id``, ``label_index``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    subset = pd.Series("test", index=rows.index, dtype=object)
    train = rows[rows["split"] == "train"]
    subset[train.index] = "train"
    if len(train) == 0 or validation_fraction <= 0:
        return subset
    n_splits = max(2, int(round(1.0 / validation_fraction)))
    patients = train["patient_id"].to_numpy()
    if len(set(patients)) >= n_splits:
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        try:
            with warnings.catch_warnings():  # "least populated class has only N members": fine here
                warnings.simplefilter("ignore", UserWarning)
                _, val_idx = next(sgkf.split(train, train["label_index"], patients))
            subset[train.index[val_idx]] = "validation"
            return subset
        except ValueError:  # every class smaller than n_splits
            pass
    for i, p in zip(train.index, patients):
        subset[i] = "validation" if stable_fraction(f"{seed}:{p}") < validation_fraction else "train"
    return subset
