"""Deploy step: serving export, versioned atomic push (disk and gs://), prune, rollback, wait, post-deploy check.

The TF Serving binary cannot run here: its REST API is played by ``FakeTFServingREST`` (a test
double in ``serving_doubles.py`` that runs the real exported SavedModel and, like TF Serving with
the ``latest`` policy, serves the highest complete version of a watched model directory). GCS is
the real ``gcp-storage-emulator`` on loopback (fixtures from ``gcs_emulator.py``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from serving_doubles import (  # noqa: E402
    PATCH,
    FakeTFServingREST,
    closed_port_url,
    random_patches,
    save_tiny_keras_model,
)

from mammo.components.config import CLASS_NAMES  # noqa: E402
from mammo.components.deploy import logic  # noqa: E402
from mammo.components.deploy.logic import (  # noqa: E402
    METADATA_RELPATH,
    MODEL_CARD_RELPATH,
    WARMUP_RELPATH,
    PushResult,
    auc_standard_error,
    check_served_prediction,
    current_champion,
    deploy,
    export_serving_model,
    list_versions,
    prune_versions,
    push_to_serving_root,
    read_warmup_requests,
    reference_image_png,
    render_model_card,
    rollback,
    wait_until_available,
    wilson_interval,
)
from mammo.components.imaging import encode_png, resize_uint8, to_uint8  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METADATA = {"backbone": "tiny", "test_metrics": {"accuracy": 0.7, "macro_auc": 0.81, "macro_f1": 0.6}}
METADATA_B = {"backbone": "tiny-b", "test_metrics": {"accuracy": 0.75, "macro_auc": 0.86, "macro_f1": 0.65}}


def _split(n: int, accuracy: float, macro_auc: float, support: int, **extra: Any) -> dict[str, Any]:
    per_class = {c: {"support": support, "auc": macro_auc, "sensitivity": accuracy, "specificity": 0.9, "f1": 0.6}
                 for c in CLASS_NAMES}
    return {"n": n, "accuracy": accuracy, "macro_auc": macro_auc, "macro_f1": 0.6, "per_class": per_class, **extra}


EVALUATION = {"backbone": "tiny", "validation": _split(40, 0.7, 0.85, 8), "test": _split(50, 0.72, 0.81, 10)}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_keras_model(tmp_path_factory.mktemp("model") / "model.keras")


@pytest.fixture(scope="module")
def keras_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model (other weights): the challenger, or the wrong model on a server."""
    return save_tiny_keras_model(tmp_path_factory.mktemp("model_b") / "model.keras", seed=7)


@pytest.fixture(scope="module")
def export_dir(keras_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_serving_model(keras_model_path, tmp_path_factory.mktemp("export") / "export",
                                metadata=METADATA, evaluation=EVALUATION)


@pytest.fixture(scope="module")
def export_b(keras_model_b: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_serving_model(keras_model_b, tmp_path_factory.mktemp("export_b") / "export", metadata=METADATA_B)


@pytest.fixture(scope="module")
def served(export_dir: Path) -> Any:
    return tf.saved_model.load(str(export_dir))


def _run_pixels(served: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    outputs = served.signatures["predict_pixels"](pixels=tf.constant(images, dtype=tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}


def _run_encoded(served: Any, blobs: list[bytes]) -> dict[str, np.ndarray]:
    outputs = served.signatures["serving_default"](image_bytes=tf.constant(blobs, dtype=tf.string))
    return {key: value.numpy() for key, value in outputs.items()}


def _files(version_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(version_dir).as_posix(): p.read_bytes() for p in version_dir.rglob("*") if p.is_file()}


# -- export ------------------------------------------------------------------------------------


def test_export_serving_default_takes_png_bytes_and_returns_four_outputs(served: Any) -> None:
    signature = served.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == ["image_bytes"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    outputs = signature.structured_outputs
    assert sorted(outputs) == ["class_index", "class_name", "class_names", "probabilities"]
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape.as_list() == [None, 5]
    assert outputs["class_index"].dtype == tf.int64 and outputs["class_index"].shape.as_list() == [None]
    assert outputs["class_name"].dtype == tf.string and outputs["class_name"].shape.as_list() == [None]
    assert outputs["class_names"].dtype == tf.string and outputs["class_names"].shape.as_list() == [None, 5]


def test_export_predict_pixels_takes_uint8_images_without_channel_axis(served: Any) -> None:
    signature = served.signatures["predict_pixels"]
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == ["pixels"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None]
    assert sorted(signature.structured_outputs) == ["class_index", "class_name", "class_names", "probabilities"]


def test_export_outputs_match_the_keras_model_and_name_the_classes(served: Any, keras_model_path: Path) -> None:
    images = random_patches(4)
    out = _run_pixels(served, images[..., 0])
    expected = keras.saving.load_model(keras_model_path).predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["class_index"], expected.argmax(axis=1))
    assert [n.decode() for n in out["class_name"]] == [CLASS_NAMES[i] for i in expected.argmax(axis=1)]
    assert out["class_names"].shape == (4, 5)
    assert all([n.decode() for n in row] == list(CLASS_NAMES) for row in out["class_names"])


def test_serving_default_on_png_of_patch_size_equals_predict_pixels(served: Any) -> None:
    patches = random_patches(3)[..., 0]
    encoded = _run_encoded(served, [encode_png(p) for p in patches])
    raw = _run_pixels(served, patches)
    np.testing.assert_allclose(encoded["probabilities"], raw["probabilities"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(encoded["class_name"], raw["class_name"])


def test_serving_default_on_larger_png_resizes_inside_the_graph(served: Any) -> None:
    big = random_patches(1, size=40, seed=3)[0, :, :, 0]
    encoded = _run_encoded(served, [encode_png(big)])
    pixels = _run_pixels(served, big[np.newaxis])
    np.testing.assert_allclose(encoded["probabilities"], pixels["probabilities"], rtol=1e-6, atol=1e-7)
    # PIL's Lanczos (the training patches' resampler) and TF's lanczos3 differ by at most 1 grey level
    client_resized = _run_pixels(served, resize_uint8(big, PATCH)[np.newaxis])
    np.testing.assert_allclose(encoded["probabilities"], client_resized["probabilities"], atol=1e-3)


def test_serving_default_on_16bit_png_uses_the_fixed_8bit_mapping(served: Any) -> None:
    from PIL import Image

    values = np.random.default_rng(5).integers(0, 65536, (PATCH, PATCH)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    encoded = _run_encoded(served, [buf.getvalue()])
    raw = _run_pixels(served, to_uint8(values, 16)[np.newaxis])
    np.testing.assert_allclose(encoded["probabilities"], raw["probabilities"], rtol=1e-5, atol=1e-6)


def test_export_writes_warmup_requests_that_the_saved_model_answers(export_dir: Path, served: Any) -> None:
    from tensorflow.core.framework import types_pb2

    requests = read_warmup_requests(export_dir / WARMUP_RELPATH)
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "predict_pixels"]
    assert all(r.model_spec.name == "mammo" for r in requests)
    encoded, pixels = requests
    assert encoded.inputs["image_bytes"].dtype == types_pb2.DT_STRING
    assert encoded.inputs["image_bytes"].string_val[0] == reference_image_png(PATCH)
    assert pixels.inputs["pixels"].dtype == types_pb2.DT_UINT8
    assert [d.size for d in pixels.inputs["pixels"].tensor_shape.dim] == [1, PATCH, PATCH]
    for request in requests:  # what TF Serving does when it loads the version
        signature = served.signatures[request.model_spec.signature_name]
        out = signature(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        assert out["probabilities"].shape == (1, 5)


def test_export_stores_metadata_evaluation_and_reference_answer(export_dir: Path, served: Any) -> None:
    meta = json.loads((export_dir / METADATA_RELPATH).read_text())
    assert meta["backbone"] == "tiny" and meta["test_metrics"]["macro_auc"] == 0.81  # what the gate reads
    assert meta["class_names"] == list(CLASS_NAMES) and meta["image_size"] == PATCH
    assert meta["signatures"] == ["serving_default", "predict_pixels"]
    answer = _run_encoded(served, [reference_image_png(PATCH)])
    np.testing.assert_allclose(meta["reference_prediction"]["probabilities"], answer["probabilities"][0], atol=1e-7)
    assert json.loads((export_dir / "assets.extra" / "evaluation.json").read_text()) == EVALUATION


def test_model_card_has_data_splits_metrics_with_intervals_use_and_limitations(export_dir: Path) -> None:
    card = (export_dir / MODEL_CARD_RELPATH).read_text()
    for heading in ("# Model card: mammo", "## Data", "## Splits", "## Metrics (with confidence intervals; 95 % unless stated)",
                    "## Intended use", "## Limitations"):
        assert heading in card
    assert "| test | 50 | 10 | 10 | 10 | 10 | 10 |" in card
    low, high = wilson_interval(0.72, 50)
    assert f"0.7200 [{low:.4f}, {high:.4f}]" in card  # test accuracy with its Wilson interval
    assert "not a medical device" in card.replace("**", "")


def test_model_card_prefers_the_evaluation_records_own_intervals() -> None:
    ci = {"macro_auc": {"low": 0.75, "high": 0.86}, "per_class_auc": {"normal": [0.7, 0.9]},
          "method": "patient bootstrap", "level": 0.9}
    evaluation = {"test": _split(50, 0.72, 0.81, 10, ci=ci, accuracy_ci=[0.6, 0.8])}
    card = render_model_card("mammo", {"class_names": list(CLASS_NAMES), "image_size": 16}, evaluation)
    assert "| test | 0.7200 [0.6000, 0.8000] | 0.8100 [0.7500, 0.8600] | 0.6000 |" in card
    assert "test: accuracy from the evaluation record, macro_auc patient bootstrap, level 0.9, macro_f1 not computed" in card
    normal_row = next(line for line in card.splitlines() if line.startswith("| normal |"))
    assert normal_row.endswith("| 0.8100 [0.7000, 0.9000] |")


def test_interval_formulas_give_hand_computed_values() -> None:
    # Wilson, 8 of 10: centre (0.8 + z²/20) / (1 + z²/10), half-width z·sqrt(0.016 + z²/400) / (1 + z²/10)
    low, high = wilson_interval(0.8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # Hanley-McNeil, AUC 0.8 on 50 + 50: Q1 = 0.8/1.2, Q2 = 1.28/1.8,
    # var = (0.16 + 49 (Q1 - 0.64) + 49 (Q2 - 0.64)) / 2500 -> SE 0.0445
    assert auc_standard_error(0.8, 50, 50) == pytest.approx(0.0445, abs=1e-4)
    assert auc_standard_error(0.8, 500, 500) < auc_standard_error(0.8, 50, 50)
    assert wilson_interval(float("nan"), 10) is None and auc_standard_error(0.9, 0, 10) is None


def test_export_when_class_names_do_not_match_outputs_raises(keras_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="5 outputs but 3 class names"):
        export_serving_model(keras_model_path, tmp_path / "export", class_names=("a", "b", "c"))


# -- push to disk ------------------------------------------------------------------------------


def test_push_when_root_empty_creates_version_1(export_dir: Path, tmp_path: Path) -> None:
    result = push_to_serving_root(export_dir, tmp_path / "serving", "mammo")
    version_dir = tmp_path / "serving" / "mammo" / "1"
    assert result == PushResult(version=1, path=str(version_dir.resolve()))
    assert _files(version_dir) == _files(export_dir)
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]  # no staging dir left behind


def test_push_when_version_1_exists_creates_version_2(export_dir: Path, tmp_path: Path) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 2
    assert list_versions(tmp_path, "mammo") == {1: True, 2: True}


def test_push_goes_above_incomplete_versions_and_ignores_non_integer_names(export_dir: Path, tmp_path: Path) -> None:
    model_root = tmp_path / "mammo"
    for name in ("3", ".tmp-9-deadbeef", "latest", "10abc"):
        (model_root / name).mkdir(parents=True)
    (model_root / "12").write_text("a file, not a version directory")
    assert list_versions(tmp_path, "mammo") == {3: False}  # an integer dir without saved_model.pb
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 4


def test_push_when_target_version_exists_raises_and_keeps_it(export_dir: Path, tmp_path: Path) -> None:
    existing = tmp_path / "mammo" / "5"
    existing.mkdir(parents=True)
    (existing / "marker").write_text("served")
    with pytest.raises(FileExistsError, match="never overwritten"):
        push_to_serving_root(export_dir, tmp_path, "mammo", version=5)
    assert [p.name for p in existing.iterdir()] == ["marker"]
    assert sorted(p.name for p in existing.parent.iterdir()) == ["5"]


def test_push_copies_saved_model_pb_last_into_a_hidden_staging_dir(
    export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    seen: dict[str, Any] = {}
    real_copy2 = shutil.copy2

    def spying_copy2(src: Any, dst: Any, **kwargs: Any) -> Any:
        dst = Path(dst)
        order.append(Path(src).relative_to(export_dir).as_posix())
        if dst.name == "saved_model.pb":
            seen["staging"] = dst.parent
            seen["target_exists"] = (tmp_path / "mammo" / "1").exists()
        return real_copy2(src, dst, **kwargs)

    monkeypatch.setattr(logic.shutil, "copy2", spying_copy2)
    push_to_serving_root(export_dir, tmp_path, "mammo")
    assert order[-1] == "saved_model.pb" and sorted(order) == sorted(_files(export_dir))
    assert seen["staging"].name.startswith(".") and seen["staging"].parent == tmp_path / "mammo"
    assert seen["target_exists"] is False  # the version appears only by the final rename


_CRASHING_PUSH = textwrap.dedent(
    """
    import os, shutil, sys
    from pathlib import Path
    from mammo.components.deploy import logic
    export, root, crash_at = sys.argv[1:4]
    real_copy2, real_rename, real_copy_blob = shutil.copy2, os.rename, None

    def die():
        os._exit(17)  # like a killed pod: no except / finally blocks run

    def copy2(src, dst, **kw):
        if Path(dst).name == crash_at:
            die()
        return real_copy2(src, dst, **kw)

    def rename(src, dst):
        if crash_at == "rename":
            die()
        return real_rename(src, dst)

    logic.shutil.copy2, logic.os.rename = copy2, rename
    if root.startswith("gs://"):
        from google.cloud.storage import Blob, Bucket
        real_upload, real_copy_blob = Blob.upload_from_filename, Bucket.copy_blob

        def upload(self, filename, *a, **kw):
            if crash_at == "upload:" + Path(filename).name:
                die()
            return real_upload(self, filename, *a, **kw)

        def copy_blob(self, blob, bucket, new_name, *a, **kw):
            if crash_at == "copy:" + new_name.rsplit("/", 1)[-1]:
                die()
            return real_copy_blob(self, blob, bucket, new_name, *a, **kw)

        Blob.upload_from_filename, Bucket.copy_blob = upload, copy_blob
    logic.push_to_serving_root(export, root, "mammo")
    """
)


def _crash_push(export_dir: Path, root: str, crash_at: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CRASHING_PUSH, str(export_dir), root, crash_at],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=dict(os.environ))
    assert proc.returncode == 17, f"the push did not crash where planned:\n{proc.stderr[-2000:]}"


def _assert_not_loadable(model_dir: Path) -> None:
    with pytest.raises((OSError, IOError, ValueError, RuntimeError)):
        tf.saved_model.load(str(model_dir))


@pytest.mark.parametrize("crash_at", ["variables.data-00000-of-00001", "saved_model.pb", "rename"])
def test_push_crash_in_the_middle_leaves_no_loadable_partial_version(
    export_dir: Path, tmp_path: Path, crash_at: str
) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")  # version 1 is being served
    _crash_push(export_dir, str(tmp_path), crash_at)
    model_root = tmp_path / "mammo"
    # TF Serving only looks at integer names: still just version 1, byte-identical
    assert sorted(p.name for p in model_root.iterdir() if p.name.isdigit()) == ["1"]
    assert _files(model_root / "1") == _files(export_dir)
    (leftover,) = [p for p in model_root.iterdir() if not p.name.isdigit()]
    assert leftover.name.startswith(".tmp-2-")
    if crash_at != "rename":
        _assert_not_loadable(leftover)
    assert current_champion(tmp_path, "mammo")["version"] == 1
    # the next push carries on, and pruning clears the crashed push's staging dir
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 2
    prune_versions(tmp_path, "mammo", keep=5, stale_staging_s=0)
    assert sorted(p.name for p in model_root.iterdir()) == ["1", "2"]


def test_push_when_export_has_no_saved_model_pb_raises(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        push_to_serving_root(tmp_path / "export", tmp_path / "serving", "mammo")


def test_push_to_unsupported_uri_scheme_raises(export_dir: Path) -> None:
    with pytest.raises(ValueError, match="only local paths and gs:// URIs"):
        push_to_serving_root(export_dir, "s3://bucket/models", "mammo")


# -- push to gs:// (emulator) ------------------------------------------------------------------


def test_push_to_gcs_publishes_saved_model_pb_last_and_counts_up(
    export_dir: Path, gcs_client: Any, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud.storage import Bucket

    copied: list[str] = []
    real_copy_blob = Bucket.copy_blob

    def spying_copy_blob(self: Any, blob: Any, bucket: Any, new_name: str, *args: Any, **kwargs: Any) -> Any:
        copied.append(new_name)
        assert kwargs.get("if_generation_match") == 0  # "create only" on real GCS
        return real_copy_blob(self, blob, bucket, new_name, *args, **kwargs)

    monkeypatch.setattr(Bucket, "copy_blob", spying_copy_blob)
    root = f"gs://{gcs_bucket}/models"
    first = push_to_serving_root(export_dir, root, "mammo")
    assert first == PushResult(version=1, path=f"gs://{gcs_bucket}/models/mammo/1")
    assert copied[-1] == "models/mammo/1/saved_model.pb"
    names = sorted(b.name for b in gcs_client.list_blobs(gcs_bucket))
    assert names == sorted(f"models/mammo/1/{rel}" for rel in _files(export_dir))  # staging objects deleted
    assert gcs_client.bucket(gcs_bucket).blob("models/mammo/1/variables/variables.index").download_as_bytes() == \
        (export_dir / "variables" / "variables.index").read_bytes()
    assert push_to_serving_root(export_dir, root, "mammo").version == 2
    assert current_champion(root, "mammo")["version"] == 2
    assert current_champion(root, "mammo")["test_metrics"]["macro_auc"] == 0.81
    with pytest.raises(FileExistsError, match="never overwritten"):
        push_to_serving_root(export_dir, root, "mammo", version=2)


@pytest.mark.parametrize("crash_at", ["upload:saved_model.pb", "copy:variables.index", "copy:saved_model.pb"])
def test_push_to_gcs_crash_in_the_middle_leaves_no_loadable_partial_version(
    export_dir: Path, gcs_client: Any, gcs_bucket: str, tmp_path: Path, crash_at: str
) -> None:
    root = f"gs://{gcs_bucket}/models"
    _crash_push(export_dir, root, crash_at)
    versions = list_versions(root, "mammo")
    if crash_at.startswith("upload:"):
        assert versions == {}  # only the dot-named staging prefix holds objects
    else:
        assert versions == {1: False}  # an integer prefix without saved_model.pb
        names = [b.name for b in gcs_client.list_blobs(gcs_bucket, prefix="models/mammo/1/")]
        assert names and "models/mammo/1/saved_model.pb" not in names
        for blob in gcs_client.list_blobs(gcs_bucket, prefix="models/mammo/1/"):
            local = tmp_path / "partial" / blob.name[len("models/mammo/1/"):]
            local.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(local))
        _assert_not_loadable(tmp_path / "partial")
    assert current_champion(root, "mammo") is None
    # the next push goes above the partial one; pruning removes the partial version and the leftovers
    second = push_to_serving_root(export_dir, root, "mammo")
    assert second.version == (1 if crash_at.startswith("upload:") else 2)
    prune_versions(root, "mammo", keep=5, stale_staging_s=0)
    assert list_versions(root, "mammo") == {second.version: True}
    assert all(b.name.startswith(f"models/mammo/{second.version}/") for b in gcs_client.list_blobs(gcs_bucket))


# -- versions: prune, champion, rollback -------------------------------------------------------


def test_prune_keeps_the_last_k_complete_versions(export_dir: Path, tmp_path: Path) -> None:
    for _ in range(4):
        push_to_serving_root(export_dir, tmp_path, "mammo")
    assert prune_versions(tmp_path, "mammo", keep=2) == [1, 2]
    assert list_versions(tmp_path, "mammo") == {3: True, 4: True}
    assert prune_versions(tmp_path, "mammo", keep=0) == []  # 0 keeps everything
    assert sorted(p.name for p in (tmp_path / "mammo").iterdir()) == ["3", "4"]


def test_prune_removes_incomplete_versions_below_the_newest_complete_one(export_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mammo" / "1").mkdir(parents=True)  # a partial copy by some other tool
    push_to_serving_root(export_dir, tmp_path, "mammo")
    (tmp_path / "mammo" / "3").mkdir()  # maybe a push in progress: newer, left alone
    assert prune_versions(tmp_path, "mammo", keep=5) == [1]
    assert list_versions(tmp_path, "mammo") == {2: True, 3: False}


def test_champion_when_nothing_served_is_none(tmp_path: Path) -> None:
    assert current_champion(tmp_path, "mammo") is None
    (tmp_path / "mammo" / ".tmp-1-abc").mkdir(parents=True)
    (tmp_path / "mammo" / "2").mkdir()  # incomplete: not served
    assert current_champion(tmp_path, "mammo") is None


def test_champion_is_the_metadata_of_the_highest_complete_version(
    export_dir: Path, export_b: Path, tmp_path: Path
) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    push_to_serving_root(export_b, tmp_path, "mammo")
    (tmp_path / "mammo" / "3").mkdir()
    champion = current_champion(tmp_path, "mammo")
    assert champion is not None
    assert champion["backbone"] == "tiny-b" and champion["test_metrics"]["macro_auc"] == 0.86
    assert champion["version"] == 2 and champion["path"] == str((tmp_path / "mammo" / "2").resolve())


def test_champion_without_metadata_file_has_version_and_path_only(tmp_path: Path) -> None:
    (tmp_path / "mammo" / "7").mkdir(parents=True)
    (tmp_path / "mammo" / "7" / "saved_model.pb").write_bytes(b"")
    assert current_champion(tmp_path, "mammo") == {"version": 7, "path": str((tmp_path / "mammo" / "7").resolve())}


def test_rollback_serves_the_previous_model_again_as_a_new_highest_version(
    export_dir: Path, export_b: Path, tmp_path: Path
) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")  # version 1: model A
    push_to_serving_root(export_b, tmp_path, "mammo")  # version 2: model B, the one that went wrong
    result = rollback(tmp_path, "mammo")
    assert result.version == 3
    v1, v3 = _files(tmp_path / "mammo" / "1"), _files(tmp_path / "mammo" / "3")
    unchanged = {rel for rel in v1 if rel not in (METADATA_RELPATH.as_posix(), MODEL_CARD_RELPATH.as_posix())}
    assert {rel: v3[rel] for rel in unchanged} == {rel: v1[rel] for rel in unchanged}  # the model itself
    champion = current_champion(tmp_path, "mammo")
    assert champion["version"] == 3 and champion["backbone"] == "tiny"  # the gate now compares against A
    assert champion["rolled_back_from"] == 1 and champion["replaced_version"] == 2
    assert (tmp_path / "mammo" / "3" / MODEL_CARD_RELPATH).read_text().startswith("> **Rollback**: ")
    answer_v1 = _run_encoded(tf.saved_model.load(str(tmp_path / "mammo" / "1")), [reference_image_png(PATCH)])
    answer_v3 = _run_encoded(tf.saved_model.load(str(tmp_path / "mammo" / "3")), [reference_image_png(PATCH)])
    np.testing.assert_array_equal(answer_v3["probabilities"], answer_v1["probabilities"])


def test_rollback_to_a_named_version_waits_and_checks_the_served_answer(
    export_dir: Path, export_b: Path, tmp_path: Path
) -> None:
    for export in (export_dir, export_b, export_b):
        push_to_serving_root(export, tmp_path, "mammo")
    with FakeTFServingREST("mammo", model_base_path=tmp_path / "mammo") as server:
        result = rollback(tmp_path, "mammo", to_version=1, wait_for_rest_url=server.url, poll_interval_s=0.01,
                          keep_versions=2)
        assert server.requests == [("GET", "/v1/models/mammo/versions/4"), ("POST", "/v1/models/mammo/versions/4:predict")]
    assert result.version == 4 and current_champion(tmp_path, "mammo")["rolled_back_from"] == 1
    assert list_versions(tmp_path, "mammo") == {3: True, 4: True}


def test_rollback_without_an_earlier_version_raises(export_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no complete version"):
        rollback(tmp_path, "mammo")
    push_to_serving_root(export_dir, tmp_path, "mammo")
    with pytest.raises(ValueError, match="nothing earlier"):
        rollback(tmp_path, "mammo")
    with pytest.raises(ValueError, match="version 9 .* is not a complete version"):
        rollback(tmp_path, "mammo", to_version=9)


def test_rollback_on_gcs_copies_the_version_back(
    export_dir: Path, export_b: Path, gcs_client: Any, gcs_bucket: str
) -> None:
    root = f"gs://{gcs_bucket}/models"
    push_to_serving_root(export_dir, root, "mammo")
    push_to_serving_root(export_b, root, "mammo")
    assert rollback(root, "mammo", keep_versions=2).version == 3
    assert list_versions(root, "mammo") == {2: True, 3: True}
    bucket = gcs_client.bucket(gcs_bucket)
    assert bucket.blob("models/mammo/3/variables/variables.data-00000-of-00001").download_as_bytes() == \
        (export_dir / "variables" / "variables.data-00000-of-00001").read_bytes()
    assert current_champion(root, "mammo")["backbone"] == "tiny"


def test_cli_rollback_prints_the_new_version(export_dir: Path, export_b: Path, tmp_path: Path, capsys: Any) -> None:
    from mammo.pipelines.cli import main

    push_to_serving_root(export_dir, tmp_path, "mammo")
    push_to_serving_root(export_b, tmp_path, "mammo")
    capsys.readouterr()
    assert main(["rollback", "--serving-root", str(tmp_path), "--to-version", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 3 and printed["rolled_back_from"] == 1


# -- wait and check ----------------------------------------------------------------------------


def test_wait_returns_once_the_version_is_available() -> None:
    with FakeTFServingREST("mammo", version=3, states=("START", "LOADING", "AVAILABLE")) as fake:
        wait_until_available(fake.url, "mammo", 3, timeout_s=10, poll_interval_s=0.01)
        assert fake.status_calls == 3
        assert fake.requests[-1] == ("GET", "/v1/models/mammo/versions/3")


def test_wait_when_never_available_raises_timeout_with_last_state() -> None:
    with FakeTFServingREST("mammo", version=1, states=("LOADING",)) as fake:
        with pytest.raises(TimeoutError, match="last state: LOADING"):
            wait_until_available(fake.url, "mammo", 1, timeout_s=0.2, poll_interval_s=0.02)
        assert fake.status_calls >= 2


def test_wait_when_version_unknown_keeps_polling_and_reports_404() -> None:
    with FakeTFServingREST("mammo", version=1) as fake:
        with pytest.raises(TimeoutError, match="HTTP 404.*version 2"):
            wait_until_available(fake.url, "mammo", 2, timeout_s=0.1, poll_interval_s=0.02)


def test_wait_when_server_unreachable_raises_timeout() -> None:
    with pytest.raises(TimeoutError, match="unreachable"):
        wait_until_available(closed_port_url(), "mammo", 1, timeout_s=0.1, poll_interval_s=0.02)


def test_check_posts_the_documented_b64_body_and_accepts_the_same_answer(export_dir: Path) -> None:
    meta = json.loads((export_dir / METADATA_RELPATH).read_text())
    png = reference_image_png(PATCH)
    with FakeTFServingREST("mammo", export_dir, version=1) as server:
        check = check_served_prediction(server.url, "mammo", 1, png, meta["reference_prediction"])
        (body,) = server.bodies
    assert server.requests == [("POST", "/v1/models/mammo/versions/1:predict")]
    assert body == {"signature_name": "serving_default", "instances": [{"b64": base64.b64encode(png).decode()}]}
    assert check["max_abs_difference"] < 1e-6


def test_check_when_the_server_answers_with_another_model_raises(export_dir: Path, export_b: Path) -> None:
    meta = json.loads((export_dir / METADATA_RELPATH).read_text())
    with FakeTFServingREST("mammo", export_b, version=1) as server:
        with pytest.raises(RuntimeError, match="not serving this model"):
            check_served_prediction(server.url, "mammo", 1, reference_image_png(PATCH), meta["reference_prediction"])


# -- the step ----------------------------------------------------------------------------------


def test_deploy_exports_pushes_waits_checks_and_prunes(keras_model_path: Path, export_b: Path, tmp_path: Path) -> None:
    for _ in range(2):
        push_to_serving_root(export_b, tmp_path, "mammo")
    with FakeTFServingREST("mammo", model_base_path=tmp_path / "mammo", states=("LOADING", "AVAILABLE")) as fake:
        result = deploy(keras_model_path, tmp_path, "mammo", METADATA, wait_for_rest_url=fake.url, wait_timeout_s=30,
                        evaluation=EVALUATION, keep_versions=2, poll_interval_s=0.01)
        assert fake.requests == [
            ("GET", "/v1/models/mammo/versions/3"),
            ("GET", "/v1/models/mammo/versions/3"),
            ("POST", "/v1/models/mammo/versions/3:predict"),
        ]
    assert result == PushResult(3, str((tmp_path / "mammo" / "3").resolve()))
    assert list_versions(tmp_path, "mammo") == {2: True, 3: True}
    champion = current_champion(tmp_path, "mammo")
    assert champion["backbone"] == "tiny" and champion["version"] == 3
    assert (tmp_path / "mammo" / "3" / "assets.extra" / "evaluation.json").is_file()


def test_deploy_when_the_server_answers_differently_fails_and_keeps_older_versions(
    keras_model_path: Path, export_b: Path, tmp_path: Path
) -> None:
    push_to_serving_root(export_b, tmp_path, "mammo")
    with FakeTFServingREST("mammo", export_b, version=2) as wrong:  # says v2 is AVAILABLE, runs model B
        with pytest.raises(RuntimeError, match=r"not serving this model.*mammo rollback"):
            deploy(keras_model_path, tmp_path, "mammo", METADATA, wait_for_rest_url=wrong.url,
                   keep_versions=1, poll_interval_s=0.01)
    assert list_versions(tmp_path, "mammo") == {1: True, 2: True}  # nothing pruned after a failed check


def test_deploy_when_never_available_raises_timeout(keras_model_path: Path, tmp_path: Path) -> None:
    with FakeTFServingREST("mammo", model_base_path=tmp_path / "mammo", states=("LOADING",)) as fake:
        with pytest.raises(TimeoutError, match="not AVAILABLE.*last state: LOADING"):
            deploy(keras_model_path, tmp_path, "mammo", METADATA, wait_for_rest_url=fake.url,
                   wait_timeout_s=0.3, poll_interval_s=0.05)


def test_deploy_to_gcs_on_the_emulator(keras_model_path: Path, gcs_client: Any, gcs_bucket: str) -> None:
    root = f"gs://{gcs_bucket}/models"
    result = deploy(keras_model_path, root, "mammo", METADATA, evaluation=EVALUATION)
    assert result == PushResult(1, f"gs://{gcs_bucket}/models/mammo/1")
    names = {b.name for b in gcs_client.list_blobs(gcs_bucket)}
    assert {"models/mammo/1/saved_model.pb", "models/mammo/1/assets.extra/model_card.md",
            "models/mammo/1/assets.extra/tf_serving_warmup_requests"} <= names
    assert current_champion(root, "mammo")["test_metrics"] == METADATA["test_metrics"]
