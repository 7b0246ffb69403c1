"""Balancing and splits: patient-grouped, no leakage, the paper's undersampling, Table 1."""

import numpy as np
import pandas as pd
import pytest

from mammo.components.balance.logic import (
    LeakageError, assign_splits, balance, balance_split, check_no_leakage,
)
from mammo.components.config import CLASS_NAMES, BalanceConfig
from mammo.components.imaging import encode_png
from mammo.components.tfrecords import iter_records, parse_example, serialize_patch, write_records


def make_manifest(n_patients=60, seed=0, overlap=("P_0000",)):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = CLASS_NAMES[p % 5]
        split = "test" if p % 5 == 0 and p % 2 == 0 else "train"
        for k in range(rng.integers(1, 4) if label != "mass_benign" else 4):
            rows.append({"patch_id": f"P_{p:04d}#{k}", "case_id": f"P_{p:04d}", "patient_id": f"P_{p:04d}",
                         "label": label, "label_index": CLASS_NAMES.index(label), "split": split})
    for pid in overlap:  # a patient in both official splits
        rows.append({"patch_id": f"{pid}#test", "case_id": f"{pid}t", "patient_id": pid, "label": "normal",
                     "label_index": 4, "split": "test" if rows[0]["split"] == "train" else "train"})
    return pd.DataFrame(rows)


def test_split_is_by_patient_and_drops_overlap_patients():
    m = make_manifest()
    m["assigned_split"], overlap = assign_splits(m, 0.2, seed=3)
    assert overlap == ["P_0000"]
    assert set(m.loc[m["patient_id"] == "P_0000", "assigned_split"]) <= {"", "test"}
    check_no_leakage(m)
    assert set(m.loc[m["split"] == "test", "assigned_split"]) == {"test"}
    train_val = m[m["assigned_split"].isin(["train", "validation"])]
    share = train_val.groupby("assigned_split")["patient_id"].nunique()
    assert 0.1 < share["validation"] / share.sum() < 0.35


def test_leakage_check_fails_when_a_patient_is_in_two_splits():
    m = pd.DataFrame({"patient_id": ["a", "a"], "assigned_split": ["train", "validation"]})
    with pytest.raises(LeakageError, match="1 patient"):
        check_no_leakage(m)


def test_undersample_deletes_down_to_the_smallest_class():
    m = make_manifest()
    m["assigned_split"], _ = assign_splits(m, 0.2, seed=3)
    out, weights = balance(m, "undersample", seed=1)
    for split in ("train", "validation"):
        counts = out[out["assigned_split"] == split]["label"].value_counts()
        assert counts.nunique() == 1 and len(counts) == 5
    assert not weights


def test_oversample_repeats_minorities_in_train_only():
    m = make_manifest()
    m["assigned_split"], _ = assign_splits(m, 0.2, seed=3)
    out, _ = balance(m, "oversample", seed=1)
    train = out[out["assigned_split"] == "train"]["label"].value_counts()
    assert train.nunique() == 1 and train.iloc[0] == m[m["assigned_split"] == "train"]["label"].value_counts().max()
    assert len(out[out["assigned_split"] == "validation"]) == len(m[m["assigned_split"] == "validation"])


def test_class_weights_leave_data_and_weight_minorities_up():
    m = make_manifest()
    m["assigned_split"], _ = assign_splits(m, 0.2, seed=3)
    out, weights = balance(m, "class_weights", seed=1)
    assert len(out) == (m["assigned_split"] != "").sum()
    counts = m[m["assigned_split"] == "train"]["label"].value_counts()
    assert weights[counts.idxmin()] > weights[counts.idxmax()]


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="balance mode"):
        balance(make_manifest().assign(assigned_split="train"), "smote", seed=0)


def test_balance_split_writes_split_records_and_table_1(tmp_path):
    m = make_manifest()
    src = tmp_path / "patches"
    src.mkdir()
    m["file"], m["record_index"] = "p.tfrecord", range(len(m))
    img = encode_png(np.zeros((8, 8), np.uint8))
    write_records(src / "p.tfrecord", (serialize_patch(img, r.label_index, r._asdict()) for r in m.itertuples()))
    m.to_parquet(src / "manifest.parquet")
    report = balance_split([src], tmp_path / "out", BalanceConfig(), seed=2)
    seen = {}
    for split in ("train", "validation", "test"):
        recs = [parse_example(r) for r in iter_records([tmp_path / "out" / f"{split}.tfrecord"])]
        assert len(recs) == sum(report.counts[split].values())
        seen[split] = {r["patient_id"] for r in recs}
    assert not (seen["train"] & seen["validation"]) and not (seen["train"] & seen["test"])
    assert not (seen["validation"] & seen["test"])
    md = (tmp_path / "out/counts.md").read_text()
    assert "| class | train | validation | test | total |" in md and "P_0000" in md
    assert report.dropped_overlap_patients == ["P_0000"]
