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
from typing import TYPE_CHECKING, Literal

import pandas as pd

if TYPE_CHECKING:
    import numpy as np


def stable_hash(key: str, nbytes: int = 4, byteorder: Literal["big", "little"] = "big") -> int:
    """The first ``nbytes`` of ``key``'s SHA-256 as an unsigned integer (same on every run and machine):
    the one hash behind seeded patient shares, extraction shards and per-case random generators."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:nbytes], byteorder)


def stable_fraction(key: str) -> float:
    """A number in [0, 1] fixed by ``key``: seeded patient hashing."""
    return stable_hash(key) / 0xFFFFFFFF


def seeded_rng(key: str, seed: int) -> "np.random.Generator":
    """A random generator fixed by ``seed`` and ``key`` (e.g. a case id): the same draws on every run."""
    import numpy as np

    return np.random.default_rng(stable_hash(f"{seed}:{key}", 8, "little"))


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
            return _cover_every_class(subset, train, seed)
        except ValueError:  # every class smaller than n_splits
            pass
    for i, p in zip(train.index, patients):
        subset[i] = "validation" if stable_fraction(f"{seed}:{p}") < validation_fraction else "train"
    return _cover_every_class(subset, train, seed)


def _cover_every_class(subset: pd.Series, train: pd.DataFrame, seed: int) -> pd.Series:
    """Move one seeded patient into validation for each class that has >= 2 training patients and no
    validation row, so validation can score every class (validate_data fails a class missing there)."""
    for label in sorted(train["label_index"].unique()):
        idx = train.index[train["label_index"] == label]
        if (subset[idx] == "validation").any():
            continue
        patients = sorted(set(train.loc[idx, "patient_id"]), key=lambda p: stable_fraction(f"{seed}:{p}"))
        if len(patients) >= 2:
            subset[train.index[train["patient_id"] == patients[0]]] = "validation"
    return subset
