"""The deploy step: export the promoted model, push it as the next served version, wait, check, prune.

One entry point, :func:`run`, used by the KFP component and ``mammo deploy``. The pieces:

* :mod:`.export`: the serving SavedModel (two signatures, the pixel budget inside the graph, warmup
  requests, the model record);
* :mod:`.model_card`: the Markdown model card stored with the version;
* :mod:`.repository`: the TF Serving model repository (versions, push, prune, champion, rollback);
* :mod:`.serving_client`: the one TF Serving client (REST / gRPC / local SavedModel), used here to
  wait for the new version and check its answer, and by ``mammo predict``.

The model record carries the facts a whole-image heatmap needs: ``patch_mm``, the physical side of
the training patches' field of view (``patches.normal_crop_mm``: the normal patches' side, and the
scale the lesion crops are drawn around), and ``pixel_spacing_mm``, the spacing assumed for images
whose header gives none (``patches.default_pixel_spacing_mm``'s ``all`` entry).

This module must not import kfp.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from mammo.components.config import CLASS_NAMES, Config
from mammo.components.contracts import MODEL_KERAS, read_json, read_report, write_report
from mammo.components.deploy.export import (
    METADATA_RELPATH, export_serving_model, export_workspace, reference_image,
)
from mammo.components.deploy.repository import (  # noqa: F401  (current_champion: the gate's import)
    PushResult, current_champion, prune_versions, push_to_serving_root,
)
from mammo.components.deploy.serving_client import check_served_prediction, wait_until_available

logger = logging.getLogger(__name__)


def deploy(
    keras_model_path: str | Path,
    serving_root: str | Path,
    model_name: str,
    metadata: dict[str, Any] | None = None,
    wait_for_rest_url: str = "",
    wait_timeout_s: float = 300,
    class_names: Sequence[str] = CLASS_NAMES,
    evaluation: dict[str, Any] | None = None,
    keep_versions: int = 0,
    check_prediction: bool = True,
    poll_interval_s: float = 2.0,
    max_image_pixels: int = 64_000_000,
) -> PushResult:
    """Export ``keras_model_path``, push it as the next version, then optionally wait, check and prune.

    With ``wait_for_rest_url``: poll until the new version is AVAILABLE (timeout -> ``TimeoutError``)
    and, if ``check_prediction``, compare one served prediction with the local SavedModel's answer
    (mismatch -> ``RuntimeError``). Pruning to ``keep_versions`` happens only after that succeeded,
    so a failed deployment never costs an older, working version.
    """
    with export_workspace() as tmp:
        export_dir = export_serving_model(keras_model_path, tmp / "export", class_names, metadata,
                                          evaluation=evaluation, model_name=model_name,
                                          max_image_pixels=max_image_pixels)
        description = read_json(export_dir / METADATA_RELPATH)
        result = push_to_serving_root(export_dir, serving_root, model_name)
    if wait_for_rest_url:
        try:
            wait_until_available(wait_for_rest_url, model_name, result.version, wait_timeout_s, poll_interval_s)
            if check_prediction:
                check_served_prediction(wait_for_rest_url, model_name, result.version,
                                        reference_image(int(description["image_size"])),
                                        description["reference_prediction"])
        except (TimeoutError, RuntimeError) as err:
            hint = (f" Version {result.version} stays at {result.path}; `mammo rollback --serving-root "
                    f"{serving_root} --model-name {model_name}` serves the previous version again.")
            raise type(err)(str(err) + hint) from err
    if keep_versions:
        prune_versions(serving_root, model_name, keep_versions)
    return result


def model_metadata(decision: dict[str, Any] | None, cfg: Config) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the model record's metadata, the evaluation record) from the gate's decision report.

    Without a decision (a manual deploy) the record holds only the configuration facts.
    """
    evaluation = None
    metadata: dict[str, Any] = {}
    if decision:
        best = next((e for e in decision.get("evaluations", []) if e.get("backbone") == decision.get("selected_backbone")),
                    None)
        evaluation = best
        metadata = dict(decision.get("model_metadata") or {})
        if not metadata and best:
            metadata = {
                "backbone": decision.get("selected_backbone"),
                "test_metrics": {k: best["test"].get(k) for k in ("accuracy", "macro_auc", "macro_f1")},
                "validation_metrics": {k: best["validation"].get(k) for k in ("accuracy", "macro_auc", "macro_f1")},
            }
    spacing = cfg.patches.spacing_defaults().get("all")
    metadata.setdefault("patch_mm", float(cfg.patches.normal_crop_mm))
    if spacing:
        metadata.setdefault("pixel_spacing_mm", float(spacing))
    metadata["class_names"] = list(CLASS_NAMES)
    return metadata, evaluation


def run(model_dir: str | Path, decision_dir: str | Path | None, serving_root: str | Path, out_dir: str | Path,
        cfg: Config) -> dict[str, Any]:
    """The deploy step: push ``model_dir``'s model (train's artifact) as described by the gate's
    ``decision_dir`` (None: no gate record) under ``serving_root``; writes and returns the report."""
    decision = read_report(decision_dir) if decision_dir else None
    metadata, evaluation = model_metadata(decision, cfg)
    d = cfg.deploy
    pushed = deploy(Path(model_dir) / MODEL_KERAS, serving_root, d.model_name, metadata,
                    wait_for_rest_url=d.wait_for_rest_url, wait_timeout_s=d.wait_timeout_s, evaluation=evaluation,
                    keep_versions=d.keep_versions, check_prediction=d.check_prediction,
                    max_image_pixels=d.max_image_pixels)
    record = {"model_name": d.model_name, "version": pushed.version, "path": pushed.path,
              "keep_versions": d.keep_versions, "waited_for": d.wait_for_rest_url or None,
              "patch_mm": metadata.get("patch_mm"), "max_image_pixels": d.max_image_pixels}
    write_report(out_dir, "deploy", record)
    logger.info("deployed %s version %d at %s", d.model_name, pushed.version, pushed.path)
    return {"step": "deploy", **record}
