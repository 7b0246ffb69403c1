"""The pipeline as Kubeflow runs it: every task in the project's images (kfp.local.DockerRunner).

``mammo demo --runner docker`` (the README's command) must end with a promoted, deployed model
that ``mammo predict`` answers from, and a run summary naming each task's image; an image that
lacks one of the package's modules, or a runtime dependency, must fail the run with a message that
names the task and the missing piece, which the subprocess runner (this Python, where both are
installed) cannot notice. Needs Docker and the built images (``container_images`` in conftest.py:
skipped without them, failed under CI=true, where .ci/run builds them first).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

MAMMO = [sys.executable, "-m", "mammo.pipelines.cli"]


def _mammo(*args: str, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([*MAMMO, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def docker_demo(container_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docker-demo") / "d"
    proc = _mammo("demo", "--runner", "docker", "--out", str(out))
    assert proc.returncode == 0, (proc.stdout[-6000:] + proc.stderr[-6000:])
    return out


def test_docker_demo_promotes_deploys_and_records_each_tasks_image(docker_demo, container_images):
    summary = json.loads((docker_demo / "run-summary.json").read_text())
    assert summary["runner"] == "docker"
    assert summary["gate"]["promoted"] is True
    tasks = summary["tasks"]
    names = {t["name"] for t in tasks}
    assert {"ingest", "validate-data", "extract-patches", "balance-split", "train", "evaluate", "select-and-gate",
            "deploy"} <= names
    for task in tasks:
        assert task["status"] == "SUCCESS" and task["seconds"] > 0, task
        expected = container_images["gpu"] if task["name"] == "train" else container_images["cpu"]
        assert task["image"] == expected, task
    # the served model: a new version on the host, owned by whoever ran the demo, answering predict
    version_dir = Path(summary["serving"]["path"])
    assert version_dir.is_relative_to(docker_demo / "serving") and (version_dir / "saved_model.pb").is_file()
    for path in (version_dir / "saved_model.pb", docker_demo / "kfp"):
        assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid()), path
    image = next((docker_demo / "data" / "normals").rglob("*.dcm"))
    proc = _mammo("predict", "--model", str(version_dir), str(image), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(proc.stdout)
    assert "error" not in result, result
    probabilities = result["probabilities"]
    assert len(probabilities) == 5 and abs(sum(probabilities.values()) - 1) < 1e-3
    assert result["class_name"] == max(probabilities, key=probabilities.get)


def _derived_image(base: str, root_step: str) -> str:
    """An image made from ``base`` with one root RUN step (then back to the base's user)."""
    tag = f"mammo-test-broken:{uuid.uuid4().hex[:8]}"
    user = subprocess.run(["docker", "image", "inspect", "--format", "{{.Config.User}}", base], capture_output=True,
                          text=True, check=True).stdout.strip()
    dockerfile = f"FROM {base}\nUSER 0\nRUN {root_step}\nUSER {user}\n"
    subprocess.run(["docker", "build", "--network", "none", "-t", tag, "-"], input=dockerfile, text=True,
                   capture_output=True, check=True, timeout=300)
    return tag


SITE = "$(python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"


@pytest.mark.parametrize("missing, root_step, task, expected", [
    ("a module of the package", f"rm {SITE}/mammo/components/ingest/logic.py", "ingest",
     "No module named 'mammo.components.ingest.logic'"),
    # whichever task imports it first (pandas is imported at module level by the data steps)
    ("a runtime dependency", "python -m pip uninstall --yes --quiet pandas", r"[\w-]+", "No module named 'pandas'"),
])
def test_an_image_missing_a_piece_fails_the_run_naming_the_task_and_the_piece(
        container_images, synth_data, tmp_path, missing, root_step, task, expected):
    # the subprocess runner's Python has both pieces, so it cannot notice their absence from an image
    assert importlib.util.find_spec("mammo.components.ingest.logic") and importlib.util.find_spec("pydicom")
    broken = _derived_image(container_images["cpu"], root_step)
    try:
        proc = _mammo("run", "--runner", "docker", "--profile", "demo", "--data", str(synth_data / "cbis"),
                      "--normals", str(synth_data / "normals"), "--out", str(tmp_path / "run"),
                      env={"MAMMO_CPU_IMAGE": broken}, timeout=900)
    finally:
        subprocess.run(["docker", "image", "rm", "--force", broken], capture_output=True)
    assert proc.returncode != 0, f"an image without {missing} passed the run"
    error = [line for line in proc.stderr.splitlines() if "ERROR mammo" in line]
    assert error and re.search(rf"task {task} failed in {re.escape(broken)} \(docker runner\): .*{re.escape(expected)}",
                               error[-1]), proc.stderr[-4000:]
