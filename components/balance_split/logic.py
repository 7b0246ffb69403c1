"""Balancing and splits: train / validation / test TFRecords with no patient in two splits.

* test = the official CBIS-DDSM test split plus the normals' test share (chosen at ingest);
* the official training split is divided 80/20 into train / validation **by patient**, stratified
  by class (``StratifiedGroupKFold``), because the CC and MLO rows of a breast show one lesion;
* patients that CBIS-DDSM puts in both its training and test sets are dropped from
  train / validation (kept in test) and listed in the report;
* balancing modes: ``undersample`` (the paper: delete excess patches down to the smallest class,
  in each split), ``oversample`` (repeat minority patches in train only), ``class_weights``
  (unchanged data, weights written for training) and ``none``;
* a leakage check raises if any patient ends up in two splits.

The splits table keeps every manifest column (crop side in mm, padding fraction, scanner, bit depth,
source, ...), so the evaluation's metadata-only shortcut baseline can read them per patch.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mammo.components.config import CLASS_NAMES, BalanceConfig, Config
from mammo.components.contracts import (COUNTS_MD, SPLITS, SPLITS_TABLE, check_shards_complete, read_manifests,
                                       split_records, write_report)
from mammo.components.runtime import fail_with_summary
from mammo.components.splits import patient_split
from mammo.components.tfrecords import iter_records, write_records
from mammo.components.validate_data.checks import PATCH_INTENSITY_COLUMNS, check_patch_intensity

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = typing.get_args(typing.get_type_hints(BalanceConfig)["mode"])


class LeakageError(RuntimeError):
    """A patient appears in more than one split."""


@dataclass
class BalanceReport:
    mode: str = "undersample"
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> patches
    dropped_overlap_patients: list[str] = field(default_factory=list)
    dropped_patches: int = 0
    class_weights: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    #: near-black / saturated patch groups (class, source) found by validate_data's patch check
    patch_checks: list[dict] = field(default_factory=list)


def assign_splits(manifest: pd.DataFrame, validation_fraction: float, seed: int) -> tuple[pd.Series, list[str]]:
    """Split name per patch and the overlap patients dropped from train/validation ('' = dropped).

    Uses ingest's ``subset`` column when the manifest carries it (the split the validation suite
    checked); otherwise computes the same patient-grouped split here.
    """
    official_train = manifest["split"] == "train"
    test_patients = set(manifest.loc[~official_train, "patient_id"])
    overlap = sorted(set(manifest.loc[official_train, "patient_id"]) & test_patients)
    if "subset" in manifest and manifest["subset"].notna().all():
        split = manifest["subset"].astype(object).copy()
    else:
        split = patient_split(manifest, validation_fraction, seed)
    split[official_train & manifest["patient_id"].isin(overlap)] = ""
    return split, overlap


def check_no_leakage(manifest: pd.DataFrame, split_col: str = "assigned_split") -> None:
    kept = manifest[manifest[split_col] != ""]
    per_patient = kept.groupby("patient_id")[split_col].nunique()
    leaking = per_patient[per_patient > 1]
    if len(leaking):
        raise LeakageError(f"{len(leaking)} patient(s) in more than one split, e.g. {list(leaking.index[:5])}")


def balance(manifest: pd.DataFrame, mode: str, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Rows to write (possibly repeated for oversampling) and class weights (for class_weights)."""
    if mode not in MODES:
        raise ValueError(f"balance mode {mode!r} not in {MODES}")
    rng = np.random.default_rng(seed)
    parts, weights = [], {}
    for split in SPLITS:
        part = manifest[manifest["assigned_split"] == split]
        counts = part["label"].value_counts()
        present = [c for c in CLASS_NAMES if counts.get(c, 0) > 0]
        if mode == "undersample" and present:
            target = min(counts[c] for c in present)
            part = pd.concat([_sample(part[part["label"] == c], target, rng, replace=False) for c in present])
        elif mode == "oversample" and split == "train" and present:
            target = max(counts[c] for c in present)
            part = pd.concat([pd.concat([part[part["label"] == c],
                                         _sample(part[part["label"] == c], target - counts[c], rng, replace=True)])
                              for c in present])
        elif mode == "class_weights" and split == "train" and present:
            total = counts.sum()
            weights = {c: float(total / (len(present) * counts[c])) for c in present}
        parts.append(part.sort_values("patch_id", kind="stable"))
    return pd.concat(parts), weights


def _sample(df: pd.DataFrame, n: int, rng: np.random.Generator, replace: bool) -> pd.DataFrame:
    if n <= 0:
        return df.iloc[:0]
    idx = rng.choice(len(df), size=n, replace=replace)
    return df.sort_values("patch_id", kind="stable").iloc[np.sort(idx)]


def counts_markdown(report: BalanceReport) -> str:
    """The paper's Table 1 shape: classes as rows, splits as columns, plus totals and each split's
    share of all patches (the paper: about 65 / 16 / 19 % train / validation / test)."""
    lines = ["| class | train | validation | test | total |", "|---|---:|---:|---:|---:|"]
    totals = dict.fromkeys(SPLITS, 0)
    for c in CLASS_NAMES:
        row = [report.counts.get(s, {}).get(c, 0) for s in SPLITS]
        for s, v in zip(SPLITS, row):
            totals[s] += v
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + f" | {sum(row)} |")
    lines.append("| **total** | " + " | ".join(str(totals[s]) for s in SPLITS) + f" | {sum(totals.values())} |")
    grand = sum(totals.values()) or 1
    lines.append("| **share** | " + " | ".join(f"{100 * totals[s] / grand:.0f}%" for s in SPLITS) + " | 100% |")
    md = f"### Patches per class and split (balance mode: {report.mode})\n\n" + "\n".join(lines) + "\n"
    if report.dropped_overlap_patients:
        md += (f"\n{len(report.dropped_overlap_patients)} patient(s) in both official train and test were dropped "
               f"from train/validation ({report.dropped_patches} patches): "
               + ", ".join(report.dropped_overlap_patients[:40]) + "\n")
    return md


def _check_patch_intensity(manifest: pd.DataFrame, out_dir: Path, cfg: Config) -> None:
    """Refuse the data when a class or source has near-black or saturated patches (a wrong pixel
    mapping, e.g. 8-bit files read as 12-bit): only here are all shards' patch statistics together.
    The report is written first, so the refusal is visible in the UI."""
    if not set(PATCH_INTENSITY_COLUMNS) <= set(manifest.columns):
        return  # shards extracted before the statistics existed
    failures = check_patch_intensity(manifest, cfg.validate)
    if failures:
        report = BalanceReport(mode=cfg.balance.mode, patch_checks=[f.to_dict() for f in failures])
        write_report(out_dir, "balance_split", asdict(report))
        raise fail_with_summary("balance_split", "; ".join(map(str, failures)), asdict(report))


def run(patches: list[str | Path], dataset: str | Path, cfg: Config) -> BalanceReport:
    """Join the extraction shards (``patches`` artifacts), split, balance and write the ``dataset``
    artifact: one TFRecord file per split, the splits table, the counts table and ``report.json``."""
    bcfg, seed = cfg.balance, cfg.seed
    out_dir = Path(dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_shards_complete(patches)  # every shard 0..n-1 exactly once (the pipeline derives them from one count)
    manifest = read_manifests(patches)
    if manifest["patch_id"].duplicated().any():
        raise ValueError(f"duplicate patch ids across shards: {manifest.loc[manifest['patch_id'].duplicated(), 'patch_id'].head().tolist()}")

    manifest["assigned_split"], overlap = assign_splits(manifest, bcfg.validation_fraction, seed)
    check_no_leakage(manifest)
    _check_patch_intensity(manifest, out_dir, cfg)
    selected, weights = balance(manifest, bcfg.mode, seed)
    check_no_leakage(selected)
    report = BalanceReport(mode=bcfg.mode, dropped_overlap_patients=overlap,
                           dropped_patches=int((manifest["assigned_split"] == "").sum()), class_weights=weights)

    # read each needed record once, then write the splits in their (deterministic) order
    wanted = set(zip(selected["path"], selected["record_index"]))
    blobs: dict[tuple[str, int], bytes] = {}
    for path in sorted(selected["path"].unique()):
        for i, rec in enumerate(iter_records([path])):
            if (path, i) in wanted:
                blobs[(path, i)] = rec
    for split in SPLITS:
        rows = selected[selected["assigned_split"] == split]
        name = split_records(split)
        write_records(out_dir / name, (blobs[(p, i)] for p, i in zip(rows["path"], rows["record_index"])))
        report.files[split] = name
        report.counts[split] = {c: int((rows["label"] == c).sum()) for c in CLASS_NAMES}
        if rows.empty:
            raise ValueError(f"split {split!r} is empty after balancing; not enough data")
    selected.drop(columns=["path"]).to_parquet(out_dir / SPLITS_TABLE, index=False)
    (out_dir / COUNTS_MD).write_text(counts_markdown(report))
    write_report(out_dir, "balance_split", asdict(report))
    log.info("balanced (%s): %s", bcfg.mode, {s: sum(v.values()) for s, v in report.counts.items()})
    return report
