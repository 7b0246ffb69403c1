"""The champion re-scored on today's test set, and the paired comparison the gate decides on.

The metric recorded when the champion was pushed was measured on the test set of that day; after
the data changes the two numbers are not comparable. So the gate loads the champion's SavedModel
from the serving root, scores it on the current test split (its ``predict_pixels`` signature: the
same uint8 patches the challenger was evaluated on) and compares the two models on the *same*
patches with a paired patient-level bootstrap of ``challenger - champion``
(:func:`mammo.components.evaluate.metrics.paired_bootstrap_difference`).

When the champion cannot be scored (no SavedModel, other class names, an unsupported metric,
patches that do not match the challenger's predictions) :func:`compare_with_champion` returns
``available: false`` with the reason, and the gate falls back to the recorded figure and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mammo.components.config import CLASS_NAMES, Config
from mammo.components.contracts import PREDICTIONS, split_records

log = logging.getLogger(__name__)

#: patches per call of the champion's signature
BATCH = 64

try:  # the version repository and the export's signature names, where the deploy step keeps them
    from mammo.components.deploy.export import PIXELS_SIGNATURE
    from mammo.components.deploy.repository import current_champion
except ImportError:  # the deploy step before its split into export / repository modules
    from mammo.components.deploy.logic import PIXELS_SIGNATURE, current_champion  # type: ignore[no-redef]

__all__ = ["compare_with_champion", "current_champion", "score_saved_model"]


def score_saved_model(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Probabilities ``[n, classes]`` of a serving SavedModel (``predict_pixels``) on uint8 patches.

    Raises ValueError when the SavedModel lacks the signature or its class names differ from ours.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if PIXELS_SIGNATURE not in loaded.signatures:
        raise ValueError(f"{path}: no {PIXELS_SIGNATURE!r} signature (has {sorted(loaded.signatures)})")
    fn = loaded.signatures[PIXELS_SIGNATURE]
    pixels = np.asarray(images, dtype=np.uint8)
    if pixels.ndim == 4:
        pixels = pixels[..., 0]
    out = []
    for start in range(0, len(pixels), BATCH):
        result = fn(pixels=tf.constant(pixels[start:start + BATCH]))
        if start == 0:
            names = [n.decode() for n in result["class_names"].numpy()[0]]
            if names != list(CLASS_NAMES):
                raise ValueError(f"{path}: the champion's classes {names} differ from {list(CLASS_NAMES)}")
        out.append(result["probabilities"].numpy())
    return np.concatenate(out).astype(float)


def challenger_test_predictions(evaluation_dir: str | Path) -> pd.DataFrame:
    """The test rows of an evaluation's ``predictions.parquet`` (patch_id, patient_id, label, p_<class>)."""
    preds = pd.read_parquet(Path(evaluation_dir) / PREDICTIONS)
    return preds[preds["split"] == "test"].reset_index(drop=True)


def compare_with_champion(champion: dict | None, evaluation_dir: str | Path, dataset_dir: str | Path | None,
                          cfg: Config) -> dict:
    """The paired comparison of the challenger (its evaluation's test predictions) with the champion
    re-scored on ``dataset_dir``'s test split; ``available: false`` with ``reason`` when not possible."""
    from mammo.components.evaluate.logic import read_split
    from mammo.components.evaluate.metrics import PAIRED_METRICS, paired_bootstrap_difference

    g = cfg.gate
    if champion is None:
        return {"available": False, "reason": "no champion served yet"}
    why = (f"gate.metric {g.metric!r} has no paired comparison (only {', '.join(PAIRED_METRICS)})"
           if g.metric not in PAIRED_METRICS else "gate.paired_resamples is 0" if g.paired_resamples <= 0
           else "the gate has no dataset input" if dataset_dir is None else None)
    if why:
        return {"available": False, "reason": why}
    try:
        y, records, images = read_split(Path(dataset_dir) / split_records("test"))
        challenger = challenger_test_predictions(evaluation_dir).set_index("patch_id")
        missing = set(records["patch_id"]) - set(challenger.index)
        if missing or len(challenger) != len(records):
            raise ValueError(f"the challenger's test predictions ({len(challenger)} patches) do not match the "
                             f"dataset's test split ({len(records)} patches, {len(missing)} without a prediction)")
        p_challenger = challenger.loc[records["patch_id"], [f"p_{c}" for c in CLASS_NAMES]].to_numpy(dtype=float)
        p_champion = score_saved_model(champion["path"], images)
    except Exception as exc:  # noqa: BLE001  (TF raises its own error types for unreadable SavedModels)
        log.warning("champion v%s not re-scored: %s", champion.get("version"), exc)
        return {"available": False, "reason": f"champion v{champion.get('version')} ({champion.get('path')}) could "
                                              f"not be re-scored on this test set: {type(exc).__name__}: {exc}"}
    paired = paired_bootstrap_difference(y, p_challenger, p_champion, records["patient_id"].to_numpy(), g.metric,
                                         g.paired_resamples, cfg.seed, cfg.evaluate.ci_level)
    result = {"available": True, "champion_version": champion.get("version"), "champion_path": champion.get("path"),
              **{k: v for k, v in paired.items() if k not in ("a", "b")},
              "challenger": paired["a"], "champion": paired["b"]}
    log.info("paired %s on this test set: challenger %.4f, champion v%s %.4f, difference %.4f [%.4f, %.4f]",
             g.metric, result["challenger"], champion.get("version"), result["champion"], result["difference"],
             *result["interval"])
    return result
