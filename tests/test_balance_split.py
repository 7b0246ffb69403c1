"""Balancing and splits: patient-grouped, no leakage, the paper's undersampling, Table 1."""

import numpy as np
import pandas as pd
import pytest

from mammo.components.balance_split.logic import (
    BalanceReport, LeakageError, assign_splits, balance, check_no_leakage, counts_markdown, run,
)
from mammo.components.config import CLASS_NAMES, Config, paper_config
from mammo.components.contracts import write_report
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
    m["crop_mm"], m["padding_fraction"] = 12.5, 0.0
    m.to_parquet(src / "manifest.parquet")
    write_report(src, "extract_patches", {"shard_index": 0, "num_shards": 1})  # a complete 1-shard extraction
    report = run([src], tmp_path / "out", Config(seed=2))
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
    # the splits table carries the manifest's metadata columns (the shortcut baseline reads them)
    table = pd.read_parquet(tmp_path / "out/splits.parquet")
    assert {"crop_mm", "padding_fraction", "assigned_split"} <= set(table.columns)
    assert len(table) == sum(sum(c.values()) for c in report.counts.values())



def test_balance_refuses_a_class_of_near_black_patches_naming_class_and_source(tmp_path):
    from mammo.components.runtime import DataRejected

    m = make_manifest(overlap=())
    src = tmp_path / "patches"
    src.mkdir()
    m["file"], m["record_index"], m["source"] = "p.tfrecord", range(len(m)), "cbis-ddsm"
    m.loc[m["label"] == "normal", "source"] = "ddsm-normals"
    # normals mapped with the wrong bit depth: every patch near black; the others look like tissue
    m["intensity_p01"], m["intensity_p99"] = 20, 200
    m.loc[m["label"] == "normal", ["intensity_p01", "intensity_p99"]] = (0, 9)
    m.to_parquet(src / "manifest.parquet")
    write_report(src, "extract_patches", {"shard_index": 0, "num_shards": 1})
    with pytest.raises(DataRejected, match="normal") as caught:
        run([src], tmp_path / "out", Config(seed=2))
    assert "ddsm-normals" in str(caught.value) and "calc_benign" not in str(caught.value)
    checks = pd.read_json(tmp_path / "out/report.json", typ="series")["patch_checks"]
    assert len(checks) == 1 and "normal" in checks[0]["subject"]

# -- the paper's Table 1 with the real dataset sizes --------------------------------------------------

# Abnormality rows (one per abnormality per view) per class and official split in the four CBIS-DDSM
# case-description CSVs, BENIGN_WITHOUT_CALLBACK counted as benign: mass train 1318 = 681 benign +
# 637 malignant, mass test 378 = 231 + 147, calc train 1546 = 1002 + 544, calc test 326 = 197 + 129.
# (test_real_csvs_* below reads the same numbers from the CSVs when they are present.)
CBIS_ROWS = {
    ("mass_benign", "train"): 681, ("mass_malignant", "train"): 637,
    ("mass_benign", "test"): 231, ("mass_malignant", "test"): 147,
    ("calc_benign", "train"): 1002, ("calc_malignant", "train"): 544,
    ("calc_benign", "test"): 197, ("calc_malignant", "test"): 129,
}
CBIS_OVERLAP_PATIENTS = 31  # patients in both the official training and test CSVs
DDSM_NORMAL_PATIENTS = 695  # DDSM's normal volumes: 695 cases with CC views of both breasts


def _normal_rows(cfg) -> list[dict]:
    """Normal patches of the paper profile: two CC images per patient, ``normal_patches_per_image``
    patches each; the first ``normal_test_fraction`` of the patients are test patients."""
    rows = []
    n_test = round(DDSM_NORMAL_PATIENTS * cfg.ingest.normal_test_fraction)
    for p in range(DDSM_NORMAL_PATIENTS):
        pid = f"N_{p:05d}"
        for side in ("LEFT", "RIGHT"):
            for k in range(cfg.patches.normal_patches_per_image):
                rows.append({"patch_id": f"Normal_{pid}_{side}_CC#{k}", "patient_id": pid, "label": "normal",
                             "split": "test" if p < n_test else "train"})
    return rows


def _paper_count_manifest(cfg) -> pd.DataFrame:
    """A manifest of the real dataset's size: CC + MLO rows per breast, one breast per patient, and
    31 test patients who are training patients too."""
    rows, train_patients = [], []
    for (label, split), n in CBIS_ROWS.items():
        for k in range(n):
            pid = f"{label}-{split}-{k // 2}"
            if split == "train":
                train_patients.append(pid)
            rows.append({"patch_id": f"{label}-{split}-{k}", "patient_id": pid, "label": label, "split": split})
    overlap = sorted(set(train_patients))[:: len(set(train_patients)) // CBIS_OVERLAP_PATIENTS][:CBIS_OVERLAP_PATIENTS]
    test_rows = [r for r in rows if r["split"] == "test"]
    for j, pid in enumerate(overlap):  # two test rows (a breast) of each overlap patient
        test_rows[2 * j]["patient_id"] = test_rows[2 * j + 1]["patient_id"] = pid
    m = pd.DataFrame(rows + _normal_rows(cfg))
    m["label_index"] = [CLASS_NAMES.index(c) for c in m["label"]]
    return m


def _assert_table_1_shape(m: pd.DataFrame, cfg) -> dict[str, dict[str, int]]:
    m["assigned_split"], overlap = assign_splits(m, cfg.balance.validation_fraction, cfg.seed)
    check_no_leakage(m)
    out, _ = balance(m, cfg.balance.mode, cfg.seed)
    check_no_leakage(out)
    counts = {s: out[out["assigned_split"] == s]["label"].value_counts().to_dict() for s in ("train", "validation", "test")}
    for split, per_class in counts.items():
        assert set(per_class) == set(CLASS_NAMES), split
        assert len(set(per_class.values())) == 1, f"{split} is not balanced: {per_class}"
    total = sum(sum(v.values()) for v in counts.values())
    shares = {s: sum(v.values()) / total for s, v in counts.items()}
    # the paper's Table 1: 65 / 16 / 19 % train / validation / test
    assert abs(shares["train"] - 0.65) < 0.03 and abs(shares["validation"] - 0.16) < 0.03, shares
    assert abs(shares["test"] - 0.19) < 0.03, shares
    # malignant calcifications (673 rows) set the size of every class, as in the paper (672)
    calc_mal = m[(m["label"] == "calc_malignant") & (m["assigned_split"] != "")]
    assert sum(counts[s]["calc_malignant"] for s in counts) == len(calc_mal)
    assert 620 <= len(calc_mal) <= 673
    md = counts_markdown(BalanceReport(mode=cfg.balance.mode, counts=counts, dropped_overlap_patients=overlap))
    assert "| **share** | " + " | ".join(f"{100 * shares[s]:.0f}%" for s in counts) + " | 100% |" in md
    return counts


def test_paper_counts_balance_to_equal_classes_in_table_1_proportions():
    cfg = paper_config()
    m = _paper_count_manifest(cfg)
    counts = _assert_table_1_shape(m, cfg)
    # the official test split is kept whole before balancing: 129 malignant calcifications
    assert counts["test"]["calc_malignant"] == CBIS_ROWS[("calc_malignant", "test")]


def test_real_csvs_balance_to_table_1_and_drop_the_31_overlap_patients(real_csv_dir):
    cfg = paper_config()
    rows = []
    for kind in ("mass", "calc"):
        for split in ("train", "test"):
            df = pd.read_csv(real_csv_dir / f"{kind}_case_description_{split}_set.csv", dtype=str)
            for i, r in df.iterrows():
                pathology = "malignant" if r["pathology"].strip() == "MALIGNANT" else "benign"
                rows.append({"patch_id": f"{kind}-{split}-{i}", "patient_id": r["patient_id"].strip(),
                             "label": f"{kind}_{pathology}", "split": split})
    m = pd.DataFrame(rows + _normal_rows(cfg))
    m["label_index"] = [CLASS_NAMES.index(c) for c in m["label"]]
    counts = {k: int(v) for k, v in m[m["label"] != "normal"].groupby(["label", "split"]).size().items()}
    assert counts == CBIS_ROWS
    m["assigned_split"], overlap = assign_splits(m, cfg.balance.validation_fraction, cfg.seed)
    assert len(overlap) == CBIS_OVERLAP_PATIENTS
    _assert_table_1_shape(m, cfg)


def test_balance_refuses_an_incomplete_or_mixed_set_of_extraction_shards(tmp_path):
    from mammo.components.contracts import check_shards_complete

    def shard(name, index, total):
        d = tmp_path / name
        d.mkdir()
        write_report(d, "extract_patches", {"shard_index": index, "num_shards": total})
        return d

    a, b, c = shard("a", 0, 3), shard("b", 1, 3), shard("c", 2, 3)
    assert check_shards_complete([c, a, b]) == 3
    with pytest.raises(ValueError, match=r"got shards \[0, 2\] of num_shards=3, missing \[1\]"):
        check_shards_complete([a, c])
    with pytest.raises(ValueError, match="shard 1 arrived twice"):
        check_shards_complete([a, b, b, c])
    with pytest.raises(ValueError, match=r"disagree on their number: num_shards \[2, 3\]"):
        check_shards_complete([a, shard("d", 1, 2)])
    with pytest.raises(ValueError, match="incomplete extraction"):
        run([a, c], tmp_path / "out", Config(seed=2))
