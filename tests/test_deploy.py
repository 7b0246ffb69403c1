"""The deploy step: ``run`` (the one entry point of the KFP component and ``mammo deploy``) and
``deploy`` (export, push, wait for TF Serving, check its answer, prune).

TF Serving's REST API is ``FakeTFServingREST`` (a test double in ``serving_doubles.py`` running the
real SavedModel and, like TF Serving with the ``latest`` policy, serving the highest complete version
of a watched model directory). GCS is the real ``gcp-storage-emulator`` on loopback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

tf = pytest.importorskip("tensorflow")

from serving_doubles import FakeTFServingREST, save_tiny_keras_model, tiny_export  # noqa: E402

from mammo.components.config import CLASS_NAMES, load_config  # noqa: E402
from mammo.components.contracts import MODEL_KERAS, read_report, write_report  # noqa: E402
from mammo.components.deploy.logic import deploy, run  # noqa: E402
from mammo.components.deploy.repository import (  # noqa: E402
    PushResult,
    current_champion,
    list_versions,
    push_to_serving_root,
)

METADATA = {"backbone": "tiny", "test_metrics": {"accuracy": 0.7, "macro_auc": 0.81, "macro_f1": 0.6}}
SPLIT = {"n": 50, "accuracy": 0.72, "macro_auc": 0.81, "macro_f1": 0.6}
EVALUATION = {"backbone": "tiny", "validation": SPLIT, "test": SPLIT}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train")
    save_tiny_keras_model(folder / MODEL_KERAS)
    return folder


@pytest.fixture(scope="module")
def export_b() -> Path:
    return tiny_export(seed=7, metadata={"backbone": "tiny-b"})


@pytest.fixture
def decision_dir(tmp_path: Path) -> Path:
    write_report(tmp_path / "decision", "select_and_gate", {
        "selected_backbone": "tiny", "promoted": True, "model_metadata": METADATA,
        "evaluations": [EVALUATION, {**EVALUATION, "backbone": "other"}]})
    return tmp_path / "decision"


# -- run: the step's one entry point ---------------------------------------------------------------


def test_run_pushes_the_gated_model_with_its_record_and_writes_the_report(
    model_dir: Path, decision_dir: Path, tmp_path: Path
) -> None:
    cfg = load_config("demo")
    record = run(model_dir, decision_dir, tmp_path / "serving", tmp_path / "out", cfg)
    report = read_report(tmp_path / "out")
    assert report["step"] == "deploy" and report["version"] == 1 and record["version"] == 1
    assert report["keep_versions"] == cfg.deploy.keep_versions and report["patch_mm"] == cfg.patches.normal_crop_mm
    champion = current_champion(tmp_path / "serving", cfg.deploy.model_name)
    assert champion["test_metrics"] == METADATA["test_metrics"] and champion["class_names"] == list(CLASS_NAMES)
    assert champion["patch_mm"] == cfg.patches.normal_crop_mm and champion["pixel_spacing_mm"] == 0.05
    stored = json.loads((Path(champion["path"]) / "assets.extra" / "evaluation.json").read_text())
    assert stored == EVALUATION  # the selected backbone's evaluation, not the other one


def test_run_prunes_to_the_configured_keep_versions(model_dir: Path, export_b: Path, tmp_path: Path) -> None:
    for _ in range(3):
        push_to_serving_root(export_b, tmp_path, "mammo")
    cfg = load_config("demo", None, ["deploy.keep_versions=2"])
    assert run(model_dir, None, tmp_path, tmp_path / "out", cfg)["version"] == 4
    assert list_versions(tmp_path, "mammo") == {3: True, 4: True}


def test_cli_deploy_calls_run_with_the_configs_keep_versions(
    model_dir: Path, decision_dir: Path, export_b: Path, tmp_path: Path, capsys: Any
) -> None:
    from mammo.pipelines.cli import main

    serving = tmp_path / "serving"
    for _ in range(6):
        push_to_serving_root(export_b, serving, "mammo")
    capsys.readouterr()
    assert main(["deploy", "--model", str(model_dir), "--decision", str(decision_dir), "--serving-root", str(serving),
                 "--out", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 7 and printed["keep_versions"] == 5  # the config's default, as in the pipeline
    assert sorted(list_versions(serving, "mammo")) == [3, 4, 5, 6, 7]
    assert main(["deploy", "--model", str(model_dir), "--serving-root", str(serving), "--out", str(tmp_path / "o2"),
                 "--keep-versions", "0"]) == 0
    assert sorted(list_versions(serving, "mammo")) == [3, 4, 5, 6, 7, 8]


# -- deploy: export, push, wait, check, prune ------------------------------------------------------


def test_deploy_exports_pushes_waits_checks_and_prunes(model_dir: Path, export_b: Path, tmp_path: Path) -> None:
    for _ in range(2):
        push_to_serving_root(export_b, tmp_path, "mammo")
    with FakeTFServingREST("mammo", model_base_path=tmp_path / "mammo", states=("LOADING", "AVAILABLE")) as fake:
        result = deploy(model_dir / MODEL_KERAS, tmp_path, "mammo", METADATA, wait_for_rest_url=fake.url,
                        wait_timeout_s=30, evaluation=EVALUATION, keep_versions=2, poll_interval_s=0.01)
        assert fake.requests == [("GET", "/v1/models/mammo/versions/3"), ("GET", "/v1/models/mammo/versions/3"),
                                 ("POST", "/v1/models/mammo/versions/3:predict")]
    assert result == PushResult(3, str((tmp_path / "mammo" / "3").resolve()))
    assert list_versions(tmp_path, "mammo") == {2: True, 3: True}
    assert current_champion(tmp_path, "mammo")["backbone"] == "tiny"


def test_deploy_when_the_server_answers_differently_fails_and_keeps_older_versions(
    model_dir: Path, export_b: Path, tmp_path: Path
) -> None:
    push_to_serving_root(export_b, tmp_path, "mammo")
    with FakeTFServingREST("mammo", export_b, version=2) as wrong:  # says v2 is AVAILABLE, runs model B
        with pytest.raises(RuntimeError, match=r"not serving this model.*mammo rollback"):
            deploy(model_dir / MODEL_KERAS, tmp_path, "mammo", METADATA, wait_for_rest_url=wrong.url,
                   keep_versions=1, poll_interval_s=0.01)
    assert list_versions(tmp_path, "mammo") == {1: True, 2: True}  # nothing pruned after a failed check


def test_deploy_when_never_available_raises_timeout(model_dir: Path, tmp_path: Path) -> None:
    with FakeTFServingREST("mammo", model_base_path=tmp_path / "mammo", states=("LOADING",)) as fake:
        with pytest.raises(TimeoutError, match="not AVAILABLE.*last state: LOADING"):
            deploy(model_dir / MODEL_KERAS, tmp_path, "mammo", METADATA, wait_for_rest_url=fake.url,
                   wait_timeout_s=0.3, poll_interval_s=0.05)


def test_deploy_to_gcs_on_the_emulator(model_dir: Path, gcs_client: Any, gcs_bucket: str) -> None:
    root = f"gs://{gcs_bucket}/models"
    result = deploy(model_dir / MODEL_KERAS, root, "mammo", METADATA, evaluation=EVALUATION)
    assert result == PushResult(1, f"gs://{gcs_bucket}/models/mammo/1")
    names = {b.name for b in gcs_client.list_blobs(gcs_bucket)}
    assert {"models/mammo/1/saved_model.pb", "models/mammo/1/assets.extra/model_card.md",
            "models/mammo/1/assets.extra/tf_serving_warmup_requests"} <= names
    assert current_champion(root, "mammo")["test_metrics"] == METADATA["test_metrics"]
