"""Run the compiled-for-cluster pipeline on this machine with ``kfp.local`` and summarise it.

``runner="subprocess"`` (``kfp.local.SubprocessRunner(use_venv=False)``) runs every lightweight
component as a subprocess of the current Python: the installed ``mammo`` package, fast, for
development. ``runner="docker"`` runs every task in the image the compiled pipeline names for it,
as Kubeflow does (``pipelines/local_runners.py``). Each step writes a ``report.json`` (with a
``step`` key) into its main output artifact; the run summary is assembled from those files after
the run, with one entry per task (name, image, status, seconds), and a task of a step that left no
report fails the run whatever kfp.local said.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from mammo.components.config import Config
from mammo.components.contracts import CONFIG_JSON, RUN_SUMMARY, find_reports

log = logging.getLogger(__name__)


def run_local(cfg: Config, data_uri: str, normals_uri: str, out_dir: str | Path, serving_root: str | None = None,
              extract_shards: int = 1, runner: str = "subprocess") -> dict:
    """Execute the pipeline locally; returns (and writes) ``out_dir/run-summary.json``."""
    from kfp import local

    from mammo.pipelines import local_runners
    from mammo.pipelines.pipeline import mammo_pipeline, pipeline_arguments

    if runner not in local_runners.RUNNERS:
        raise ValueError(f"runner {runner!r}: use one of {', '.join(local_runners.RUNNERS)}")

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    serving_root = str(Path(serving_root).resolve()) if serving_root else str(out_dir / "serving")
    kfp_root = out_dir / "kfp"
    kfp_root.mkdir(exist_ok=True)
    images = local_runners.task_images(mammo_pipeline)
    handed_over: list[str] = []
    if runner == "docker":
        if any("://" in uri for uri in (data_uri, normals_uri, serving_root)):
            raise ValueError("--runner docker reads and writes local folders only (its containers have no network)")
        Path(serving_root).mkdir(parents=True, exist_ok=True)
        kfp_runner = local_runners.docker_runner(
            images, read_only=[str(Path(data_uri).resolve()), str(Path(normals_uri).resolve())],
            writable=[serving_root], pipeline_root=str(kfp_root))
        helper_image = images["ingest"]
        handed_over = [str(kfp_root), serving_root]
        local_runners.hand_over(handed_over, local_runners.check_images({helper_image})[helper_image], helper_image)
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=str(kfp_root), raise_on_error=True)
    args = pipeline_arguments(cfg, str(Path(data_uri).resolve()), str(Path(normals_uri).resolve()), serving_root,
                              extract_shards)
    (out_dir / CONFIG_JSON).write_text(json.dumps(cfg.to_dict(), indent=2))
    before = set(kfp_root.glob("*")) if kfp_root.exists() else set()
    start = time.time()
    error: Exception | None = None
    try:
        with local_runners.TaskTracker(images) as tracker:
            mammo_pipeline(**args)
    except Exception as exc:  # noqa: BLE001 - named below, with the task that failed
        error = exc
    finally:
        if handed_over:  # outputs back to whoever ran this
            local_runners.hand_over(handed_over, local_runners.invoking_user(), helper_image)
    run_dirs = sorted(set(kfp_root.glob("*")) - before, key=lambda p: p.stat().st_mtime)
    failed = local_runners.check_tasks(tracker.tasks, run_dirs[-1] if run_dirs else None)
    if failed:
        raise RuntimeError(f"task {failed.name} failed in {failed.image if runner == 'docker' else 'this Python'}"
                           f" ({runner} runner): {failed.error}") from error
    if error is not None:
        raise error
    if not run_dirs:
        raise RuntimeError(f"kfp.local wrote no run directory under {kfp_root}")
    summary = build_summary(run_dirs[-1], cfg)
    summary["seconds"] = round(time.time() - start, 1)
    summary["run_dir"] = str(run_dirs[-1])
    summary["runner"] = runner
    summary["tasks"] = [task.summary() for task in tracker.tasks]
    (out_dir / RUN_SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def build_summary(run_dir: Path, cfg: Config) -> dict:
    """``run-summary.json`` (ARCHITECTURE.md section 3) from the steps' reports of one run."""
    reports = find_reports(run_dir)
    ingest = (reports.get("ingest") or [{}])[0]
    totals = ingest.get("totals", {})
    extract = reports.get("extract_patches", [])
    balance = (reports.get("balance_split") or [{}])[0]
    gate = (reports.get("select_and_gate") or [None])[0]
    deploy = (reports.get("deploy") or [None])[0]
    summary: dict = {
        "counts": {
            "rows_read": totals.get("read"),
            "rows_ingested": totals.get("ingested"),
            "rows_rejected": totals.get("rejected"),
            "per_input": ingest.get("counts"),
            "reject_reasons": ingest.get("reject_reasons"),
            "patches_extracted": _sum_dicts([e.get("patches_per_class", {}) for e in extract]),
            "extract_rejected_cases": sum(e.get("cases_rejected", 0) for e in extract),
            "patches_per_class_and_split": balance.get("counts"),
            "dropped_overlap_patients": len(balance.get("dropped_overlap_patients", [])),
        },
        "backbones": {},
        "selected_backbone": None,
        "gate": None,
        "serving": None,
        "config": {"backbones": cfg.train.backbones, "image_size": cfg.patches.image_size,
                   "balance_mode": cfg.balance.mode},
    }
    for ev in reports.get("evaluate", []):
        summary["backbones"][ev["backbone"]] = {
            split: {k: ev[split][k] for k in ("n", "accuracy", "macro_auc", "macro_f1", "per_class",
                                               "confusion_matrix")}
            for split in ("validation", "test")
        }
        summary["backbones"][ev["backbone"]]["train"] = ev.get("train")
        # evaluation depth (issue 6): intervals, calibration, subgroups (compact: no per-class recall)
        b = summary["backbones"][ev["backbone"]]
        for split in ("validation", "test"):
            b[split].update({k: ev[split].get(k) for k in ("n_patients", "ece", "nll", "brier", "undefined_auc")})
        b["test"]["ci"] = ev["test"].get("ci")
        audit = ev.get("shortcut_audit") or {}
        b["shortcut_audit"] = {k: audit.get(k) for k in ("available", "macro_auc", "model_macro_auc",
                                                         "model_minus_shortcut", "features", "note") if k in audit}
        b["test"]["subgroups"] = {
            col: ({"groups": [{k: g[k] for k in ("value", "n", "accuracy", "macro_auc")} for g in sg["groups"]]}
                  if sg.get("available") else {"available": False, "note": sg.get("note")})
            for col, sg in (ev["test"].get("subgroups") or {}).items()}
        cal = ev.get("calibration")
        b["calibration"] = {k: cal[k] for k in ("temperature", "test_ece_before", "test_ece_after")} if cal else None
    if gate:
        summary["selected_backbone"] = gate["selected_backbone"]
        summary["gate"] = {k: gate[k] for k in ("metric", "value", "threshold", "champion_value", "promoted",
                                                  "reason")}
        summary["gate"].update({k: gate.get(k) for k in ("forced", "would_promote", "champion_version", "value_ci",
                                                         "max_auc_drop", "class_floors", "checks", "notes",
                                                         "champion_comparison")})
    if deploy:
        summary["serving"] = {k: deploy[k] for k in ("model_name", "version", "path")}
    return summary


def _sum_dicts(dicts: list[dict]) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out
