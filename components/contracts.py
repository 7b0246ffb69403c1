"""What passes between the steps: artifact file names, table schemas and JSON reports, declared once.

Every step, the KFP wrappers, the CLI and the run summary read and write artifacts through this
module; no other module spells an artifact's file name. An artifact is a directory (a KFP output
artifact used as a folder); each step writes its ``report.json`` into its main output with a
``step`` key naming the step, which is how the run summary finds it.

| artifact (producer)           | files                                                        |
|-------------------------------|--------------------------------------------------------------|
| cases (ingest)                | cases.parquet, rejects.parquet, skipped.parquet, report.json |
| data_docs (validate_data)     | report.html, report.json, validation_result.json, gx/        |
| patches (extract_patches)     | patches-*.tfrecord, manifest.parquet, preview.html, report.json |
| dataset (balance_split)       | {train,validation,test}.tfrecord, splits.parquet, counts.md, report.json |
| model (train)                 | model.keras, history.json, report.json, checkpoints/          |
| evaluation (evaluate)         | metrics.json, predictions.parquet, report.html, report.json  |
| decision (select_and_gate)    | report.json, report.html; selected_model: model + calibration.json |
| serving (deploy)              | report.json                                                  |
| serving version (deploy)      | saved_model.pb, variables/, assets.extra/{mammo_model.json, evaluation.json, model_card.md} |
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

# -- step names (the pipeline's, the CLI's, the folders', the tests') -----------------------------

STEPS: tuple[str, ...] = ("ingest", "validate_data", "extract_patches", "balance_split", "train", "evaluate",
                          "select_and_gate", "deploy")

# -- file names ------------------------------------------------------------------------------------

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
CONFIG_JSON = "config.json"
RUN_SUMMARY = "run-summary.json"

# ingest
CASES = "cases.parquet"
REJECTS = "rejects.parquet"
SKIPPED = "skipped.parquet"
# validate_data
VALIDATION_RESULT = "validation_result.json"
DATA_DOCS_DIR = "gx"  # the great-expectations Data Docs site (index.html inside)
# extract_patches
MANIFEST = "manifest.parquet"
PREVIEW_HTML = "preview.html"
SHARD_GLOB = "patches-*.tfrecord"
# balance_split
SPLITS = ("train", "validation", "test")
SPLITS_TABLE = "splits.parquet"
COUNTS_MD = "counts.md"
# train
MODEL_KERAS = "model.keras"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_STATE = "state.json"
TENSORBOARD = "tensorboard"
# inside the checkpoint folder (besides CHECKPOINT_STATE)
CHECKPOINT_LAST_WEIGHTS = "last.weights.h5"
CHECKPOINT_BEST_WEIGHTS = "best.weights.h5"
CHECKPOINT_OPTIMIZER = "optimizer.npz"
CHECKPOINT_EARLY_STOPPING = "early_stopping.npz"
# evaluate
METRICS = "metrics.json"
PREDICTIONS = "predictions.parquet"
# select_and_gate (beside the selected model)
CALIBRATION = "calibration.json"
# deploy: inside a serving version
SAVED_MODEL_PB = "saved_model.pb"
ASSETS_EXTRA = "assets.extra"
MODEL_RECORD = "mammo_model.json"
EVALUATION_RECORD = "evaluation.json"
MODEL_CARD = "model_card.md"
WARMUP_REQUESTS = "tf_serving_warmup_requests"  # TF Serving's fixed name, inside assets.extra
# mammo predict --heatmap DIR: per image <stem> + these suffixes
HEATMAP_OVERLAY = ".heatmap.png"
HEATMAP_MAPS = ".maps.npy"
HEATMAP_REGIONS = ".regions.json"
# ingest inputs (the dataset's own names, not ours, but read in several places)
CBIS_CSVS = ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv",
             "calc_case_description_train_set.csv", "calc_case_description_test_set.csv")
NORMALS_MANIFEST = "manifest.csv"
NBIA_METADATA = "metadata.csv"
JPEG_DICOM_INFO = "dicom_info.csv"


def shard_name(shard_index: int, num_shards: int, file_index: int) -> str:
    """A patch shard's TFRecord file name (matches :data:`SHARD_GLOB`)."""
    return f"patches-{shard_index:05d}-of-{num_shards:05d}-{file_index:03d}.tfrecord"


def preview_png(label: str) -> str:
    """The preview grid PNG of one class in an extract_patches output."""
    return f"preview_{label}.png"


def split_records(split: str) -> str:
    """The TFRecord file of one split in a balanced dataset."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return f"{split}.tfrecord"


def split_shards_glob(split: str) -> str:
    """The glob of a split written as several files (``<split>-*.tfrecord``) instead of one."""
    return split_records(split).replace(".tfrecord", "-*.tfrecord")


# -- schemas ---------------------------------------------------------------------------------------

#: the columns of ``cases``, in order (the validation suite checks exactly this set)
CASE_COLUMNS: list[str] = [
    "case_id", "patient_id", "label", "label_index", "abnormality_type", "pathology", "split", "subset",
    "side", "view", "abnormality_id", "breast_density", "assessment", "subtlety", "mass_shape",
    "mass_margins", "calc_type", "calc_distribution", "image_uri", "roi_mask_uri", "cropped_uri",
    "image_rows", "image_cols", "mask_rows", "mask_cols", "bits_stored", "photometric", "modality",
    "image_format", "pixel_spacing_mm", "pixel_spacing_source", "source", "scanner", "source_file", "source_row",
]
#: ``cases`` columns that may be missing per row (nullable integers in Parquet)
NULLABLE_INT_COLUMNS: list[str] = ["breast_density", "assessment", "subtlety", "mask_rows", "mask_cols"]
#: one row per input row (or file) that did not become a case; ``source_row`` is the 1-based data row
REJECT_COLUMNS: list[str] = ["source_file", "source_row", "case_id", "reason", "message"]
#: one row per file of the normals folder that is neither a case nor a reject (a .ics, a .dcm.bak, ...)
SKIPPED_COLUMNS: list[str] = ["source", "path", "reason", "message"]
#: one row per patch written by extract_patches
#: (``bits_stored``: the depth the patch was mapped with; ``crop_size`` in source pixels, ``crop_mm`` the
#: same side in mm; ``padding_fraction``: share of the crop that is zero padding outside the image;
#: ``spacing_source``: ingest's ``pixel_spacing_source``, else header / default; ``mask_blobs``: ROI regions in the box;
#: ``protocol``: paper | unbiased). The metadata-only shortcut baseline reads these columns.
MANIFEST_COLUMNS: list[str] = [
    "patch_id", "case_id", "patient_id", "label", "label_index", "split", "subset", "source", "scanner",
    "abnormality_type", "view", "breast_density", "bits_stored", "patch_source", "mask_status", "crop_y0",
    "crop_x0", "crop_size", "crop_mm", "padding_fraction", "pixel_spacing_mm", "spacing_source", "mask_blobs",
    "protocol", "file", "record_index", "intensity_p01", "intensity_p99",
]


# -- readers and writers ---------------------------------------------------------------------------


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (a reader never sees half a file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file when it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (expected an artifact file written by an earlier step)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def write_report(artifact: str | Path, step: str, data: dict) -> Path:
    """A step's ``report.json`` in its main output artifact, tagged with the step's name."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")
    return write_json(Path(artifact) / REPORT_JSON, {"step": step, **data})


def read_report(artifact: str | Path) -> dict:
    """The ``report.json`` of an artifact directory."""
    return read_json(Path(artifact) / REPORT_JSON)


def find_reports(run_dir: str | Path) -> dict[str, list[dict]]:
    """Every step report under a run directory, by step name (in path order)."""
    found: dict[str, list[dict]] = {}
    for path in sorted(Path(run_dir).rglob(REPORT_JSON)):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("step") in STEPS:
            found.setdefault(data["step"], []).append(data)
    return found


def read_cases(artifact: str | Path):
    """The ``cases`` table of an ingest output (pandas DataFrame)."""
    import pandas as pd

    return pd.read_parquet(Path(artifact) / CASES)


def read_manifests(artifacts: Iterable[str | Path]):
    """The patch manifests of one or more extract_patches outputs, with each shard file's full ``path``."""
    import pandas as pd

    frames = []
    for a in artifacts:
        m = pd.read_parquet(Path(a) / MANIFEST)
        m["path"] = [str(Path(a) / f) for f in m["file"]]
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*MANIFEST_COLUMNS, "path"])


def check_shards_complete(artifacts: Iterable[str | Path]) -> int:
    """The number of extraction shards, after checking that ``artifacts`` (extract_patches outputs)
    are exactly shards 0..n-1 of one n (from each shard's ``report.json``); a missing, repeated or
    foreign shard would silently drop or double images, so it is a ValueError naming the shards."""
    seen: dict[int, str] = {}
    totals = set()
    for a in artifacts:
        report = read_report(a)
        index, total = int(report["shard_index"]), int(report["num_shards"])
        if index in seen:
            raise ValueError(f"extraction shard {index} arrived twice: {seen[index]} and {a}")
        seen[index] = str(a)
        totals.add(total)
    if len(totals) > 1:
        raise ValueError(f"extraction shards disagree on their number: num_shards {sorted(totals)}")
    total = totals.pop() if totals else 0
    missing = sorted(set(range(total)) - set(seen))
    if not seen or missing or max(seen) >= total:
        raise ValueError(f"incomplete extraction: got shards {sorted(seen)} of num_shards={total}"
                         + (f", missing {missing}" if missing else ""))
    return total
