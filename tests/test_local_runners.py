"""The per-task record of a local run (pipelines/local_runners.py), without Docker: task names and
images from the compiled pipeline, kfp.local's log lines and output attributed per thread, and a
task that "succeeded" without its report.json failing the run by name."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from mammo.components.contracts import REPORT_JSON
from mammo.pipelines import local_runners
from mammo.pipelines.local_runners import Task, TaskTracker, check_tasks


def test_task_images_name_every_step_with_the_configured_image():
    from mammo.components.config import CPU_IMAGE, GPU_IMAGE
    from mammo.pipelines.pipeline import mammo_pipeline

    images = local_runners.task_images(mammo_pipeline)
    assert images["train"] == GPU_IMAGE
    for step in ("ingest", "validate-data", "extract-patches", "balance-split", "evaluate", "select-and-gate", "deploy"):
        assert images[step] == CPU_IMAGE, step


def _kfp_log(message: str) -> None:
    """What kfp.local logs (through the root logger, with colour codes)."""
    logging.getLogger().info(message)


def test_tracker_records_tasks_from_kfp_log_lines_and_keeps_each_threads_output_apart(capsys):
    tracker = TaskTracker({"train": "gpu-image", "evaluate": "cpu-image"})

    def run(name: str, status: str) -> None:
        _kfp_log(f"Executing task \x1b[96m'{name}'\x1b[0m")
        for i in range(50):
            print(f"{name} line {i}")
        _kfp_log(f"Task \x1b[96m'{name}'\x1b[0m finished with status \x1b[92m{status}\x1b[0m")

    logging.getLogger().setLevel(logging.INFO)
    with tracker:
        threads = [threading.Thread(target=run, args=("train", "SUCCESS")),
                   threading.Thread(target=run, args=("evaluate", "FAILURE"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _kfp_log("Executing task 'deploy'")  # still running when the run ends: a failure
    by_name = {t.name: t for t in tracker.tasks}
    assert by_name["train"].summary() == {"name": "train", "image": "gpu-image", "status": "SUCCESS",
                                          "seconds": by_name["train"].seconds}
    assert by_name["evaluate"].status == "FAILURE" and by_name["deploy"].status == "FAILURE"
    assert "".join(by_name["train"].log).count("train line") == 50
    assert "evaluate" not in "".join(by_name["train"].log)
    assert "train line 49" in capsys.readouterr().out, "the output still reaches the terminal"


def _report(run_dir: Path, task: str, step: str) -> None:
    out = run_dir / task / "report"
    out.mkdir(parents=True)
    (out / REPORT_JSON).write_text(json.dumps({"step": step}))


def test_a_task_that_reported_success_without_its_report_fails_by_name(tmp_path):
    _report(tmp_path, "ingest", "ingest")
    _report(tmp_path, "train-0", "train")
    tasks = [Task("ingest", "cpu", "SUCCESS", 1.0), Task("fingerprint-data", "cpu", "SUCCESS", 1.0),
             Task("train", "gpu", "SUCCESS", 5.0), Task("train", "gpu", "SUCCESS", 5.0),
             Task("evaluate", "cpu", "FAILURE", 1.0)]
    tasks[3].log = ["Traceback (most recent call last):\n", "  File \"x.py\", line 1\n",
                    "PermissionError: [Errno 13] Permission denied: '/runs/kfp/train/model'\n", "done\n"]
    failed = check_tasks(tasks, tmp_path)
    assert failed is tasks[3] and failed.status == "FAILURE"
    assert failed.error == ("reported success but wrote no report.json; last error in its log: "
                            "PermissionError: [Errno 13] Permission denied: '/runs/kfp/train/model'")
    assert tasks[1].status == "SUCCESS", "helper tasks have no report contract"


@pytest.mark.parametrize("log, expected", [
    (["x\n", "ModuleNotFoundError: No module named 'pydicom'\n", "cleanup\n"], "ModuleNotFoundError: No module named 'pydicom'"),
    (["12:00 ERROR mammo.validate: critical: class_coverage\n", "report: r.html\n"], "12:00 ERROR mammo.validate: critical: class_coverage"),
    (["only line\n"], "only line"),
    ([], None),
])
def test_the_error_a_task_log_ends_with(log, expected):
    task = Task("ingest", "cpu")
    task.log = log
    assert task.last_error() == expected


def test_docker_runner_refuses_remote_data(tmp_path):
    from mammo.components.config import demo_config
    from mammo.pipelines.local_run import run_local

    with pytest.raises(ValueError, match="local folders only"):
        run_local(demo_config(), "gs://bucket/cbis", str(tmp_path), tmp_path / "out", runner="docker")
    with pytest.raises(ValueError, match="runner 'podman'"):
        run_local(demo_config(), str(tmp_path), str(tmp_path), tmp_path / "out", runner="podman")
