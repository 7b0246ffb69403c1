"""The whole pipeline through kfp.local.SubprocessRunner(use_venv=False), on tiny synthetic data."""

import json
from pathlib import Path

from mammo.components.config import demo_config
from mammo.pipelines.cli import main
from mammo.pipelines.local_run import run_local

TINY = {
    "patches.image_size": 32, "patches.min_crop_mm": 1.2, "patches.normal_crop_mm": 2.4,
    "train.input_size": 32, "train.batch_size": 16, "train.stage1_epochs": 1, "train.stage2_epochs": 1,
    "train.stage3_max_epochs": 2, "validate.min_per_class": 3,
    # a two-epoch model must still pass (even one that predicts mostly one class), so the deploy branch runs
    "gate.auc_threshold": 0.0, "gate.max_single_class_fraction": 1.0,
}


def test_local_run_ingests_trains_gates_deploys_and_the_model_predicts(synth_data, tmp_path, capsys):
    cfg = demo_config().with_overrides(TINY)
    summary = run_local(cfg, synth_data / "cbis", synth_data / "normals", tmp_path / "run", extract_shards=2)

    on_disk = json.loads((tmp_path / "run/run-summary.json").read_text())
    assert on_disk["selected_backbone"] == summary["selected_backbone"] == "mobilenetv3small"
    c = on_disk["counts"]
    assert c["rows_read"] == c["rows_ingested"] + c["rows_rejected"] and c["rows_read"] > 0
    assert sum(c["patches_extracted"].values()) > 0
    assert set(c["patches_per_class_and_split"]) == {"train", "validation", "test"}
    test_metrics = on_disk["backbones"]["mobilenetv3small"]["test"]
    assert 0.0 <= test_metrics["macro_auc"] <= 1.0 and len(test_metrics["confusion_matrix"]) == 5
    gate = on_disk["gate"]
    assert gate["promoted"] is True, gate["reason"]
    assert gate["threshold"] == 0.0 and gate["metric"] == "macro_auc"
    serving = on_disk["serving"]
    version_dir = Path(serving["path"])
    assert serving["version"] == 1 and serving["model_name"] == "mammo"
    assert version_dir == tmp_path / "run/serving/mammo/1" and (version_dir / "saved_model.pb").exists()

    # the evaluation report explains the model: Grad-CAM on test patches, heatmaps over full test images
    from mammo.components import contracts

    page = next(Path(on_disk["run_dir"]).rglob(f"evaluation/{contracts.REPORT_HTML}")).read_text()
    assert "Grad-CAM" in page and "Heatmaps of full test images" in page and "Shortcut audit" in page

    # the deployed SavedModel runs on a PNG patch and on a DICOM file through the CLI
    run_dir = Path(on_disk["run_dir"])
    png = next(run_dir.rglob("preview_normal.png"))
    dicom = next((synth_data / "normals").rglob("*.dcm"))
    capsys.readouterr()
    assert main(["predict", "--model", str(version_dir), str(png), str(dicom)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [Path(r["file"]).suffix for r in results] == [".png", ".dcm"]
    for r in results:
        assert abs(sum(r["probabilities"].values()) - 1.0) < 1e-3
        assert r["class_name"] in r["probabilities"]

    # the gate of a later run, called directly on this run's outputs against the same serving root: the
    # champion (version 1) is read back and re-scored on the test split; a failing gate pushes nothing
    from mammo.components.select_and_gate.logic import run as select_and_gate

    evaluations = sorted({p.parent for p in run_dir.rglob(contracts.METRICS)})
    models = sorted({p.parent for p in run_dir.rglob(contracts.MODEL_KERAS)} - {Path(serving["path"])})
    dataset = next(p.parent for p in run_dir.rglob(contracts.SPLITS_TABLE))
    strict = cfg.with_overrides({"gate.auc_threshold": 1.0})  # unreachable for a two-epoch model
    decision = select_and_gate(evaluations, models[:1], tmp_path / "run/serving", tmp_path / "decision",
                               tmp_path / "selected", strict, dataset=dataset)
    record = contracts.read_report(tmp_path / "decision")
    assert decision.promoted is False and record["promoted"] is False
    assert "< threshold 1.0000" in record["reason"]
    assert record["champion_version"] == 1 and record["champion_value"] is not None
    assert sorted(p.name for p in (tmp_path / "run/serving/mammo").iterdir()) == ["1"]
