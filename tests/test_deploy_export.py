"""Deploy, export: the serving SavedModel's two signatures, the in-graph pixel budget, warmup, the model
record, and the temporary export folder's cleanup."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from serving_doubles import PATCH, random_patches, save_tiny_keras_model, tiny_export  # noqa: E402

from mammo.components.config import CLASS_NAMES  # noqa: E402
from mammo.components.deploy import export  # noqa: E402
from mammo.components.deploy.export import (  # noqa: E402
    METADATA_RELPATH,
    WARMUP_RELPATH,
    export_serving_model,
    export_workspace,
    read_warmup_requests,
    reference_image,
    remove_stale_workspaces,
)
from mammo.components.imaging import encode_png, resize_uint8, to_uint8  # noqa: E402

METADATA = {"backbone": "tiny", "test_metrics": {"accuracy": 0.7, "macro_auc": 0.81, "macro_f1": 0.6}}
EVALUATION = {"backbone": "tiny", "test": {"n": 50, "accuracy": 0.72, "macro_auc": 0.81, "macro_f1": 0.6}}
BUDGET = 64 * 64  # a small budget so the tests need no large images


@pytest.fixture(scope="module")
def export_dir() -> Path:
    return tiny_export(metadata=METADATA, evaluation=EVALUATION, max_image_pixels=BUDGET)


@pytest.fixture(scope="module")
def served(export_dir: Path) -> Any:
    return tf.saved_model.load(str(export_dir))


def _run_pixels(served: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    outputs = served.signatures["predict_pixels"](pixels=tf.constant(images, dtype=tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}


def _run_encoded(served: Any, blobs: list[bytes]) -> dict[str, np.ndarray]:
    outputs = served.signatures["serving_default"](image_bytes=tf.constant(blobs, dtype=tf.string))
    return {key: value.numpy() for key, value in outputs.items()}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk declaring ``width`` x ``height``, then junk: a decompression bomb's
    header without its (huge) body."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64


# -- the signatures --------------------------------------------------------------------------------


def test_serving_default_takes_png_bytes_and_returns_four_outputs(served: Any) -> None:
    signature = served.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == ["image_bytes"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    outputs = signature.structured_outputs
    assert sorted(outputs) == ["class_index", "class_name", "class_names", "probabilities"]
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape.as_list() == [None, 5]
    assert outputs["class_index"].dtype == tf.int64 and outputs["class_name"].dtype == tf.string
    assert outputs["class_names"].shape.as_list() == [None, 5]


def test_predict_pixels_takes_uint8_images_without_channel_axis(served: Any) -> None:
    signature = served.signatures["predict_pixels"]
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == ["pixels"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None]


def test_outputs_match_the_keras_model_and_name_the_classes(served: Any, tmp_path: Path) -> None:
    images = random_patches(4)
    out = _run_pixels(served, images[..., 0])
    model = keras.saving.load_model(save_tiny_keras_model(tmp_path / "same.keras"))  # same seed, same weights
    expected = model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    assert [n.decode() for n in out["class_name"]] == [CLASS_NAMES[i] for i in expected.argmax(axis=1)]
    assert all([n.decode() for n in row] == list(CLASS_NAMES) for row in out["class_names"])


def test_serving_default_on_png_of_patch_size_equals_predict_pixels(served: Any) -> None:
    patches = random_patches(3)[..., 0]
    encoded = _run_encoded(served, [encode_png(p) for p in patches])
    np.testing.assert_allclose(encoded["probabilities"], _run_pixels(served, patches)["probabilities"], atol=1e-7)


def test_serving_default_on_larger_png_resizes_inside_the_graph(served: Any) -> None:
    big = random_patches(1, size=40, seed=3)[0, :, :, 0]
    encoded = _run_encoded(served, [encode_png(big)])
    np.testing.assert_allclose(encoded["probabilities"], _run_pixels(served, big[np.newaxis])["probabilities"], atol=1e-7)
    # PIL's Lanczos (the training patches' resampler) and TF's lanczos3 differ by at most 1 grey level
    client = _run_pixels(served, resize_uint8(big, PATCH)[np.newaxis])
    np.testing.assert_allclose(encoded["probabilities"], client["probabilities"], atol=1e-3)


def test_serving_default_on_16bit_png_uses_the_fixed_8bit_mapping(served: Any) -> None:
    from PIL import Image

    values = np.random.default_rng(5).integers(0, 65536, (PATCH, PATCH)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    encoded = _run_encoded(served, [buf.getvalue()])
    raw = _run_pixels(served, to_uint8(values, 16)[np.newaxis])
    np.testing.assert_allclose(encoded["probabilities"], raw["probabilities"], rtol=1e-5, atol=1e-6)


def test_serving_default_accepts_jpeg(served: Any) -> None:
    from PIL import Image

    image = random_patches(1, seed=4)[0, :, :, 0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    encoded = _run_encoded(served, [buf.getvalue()])
    np.testing.assert_allclose(encoded["probabilities"], _run_pixels(served, decoded[np.newaxis])["probabilities"],
                               atol=2e-3)  # libjpeg versions may differ by a grey level


# -- the pixel budget inside the graph -------------------------------------------------------------


def test_png_declaring_more_pixels_than_the_budget_fails_before_decoding(served: Any) -> None:
    # 16000 x 16000 declared; the body is junk, so decoding would fail differently: the budget fires first
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"16000\] \[x\] \[16000.*pixel budget of 4096"):
        _run_encoded(served, [png_header_only(16000, 16000)])


def test_png_within_the_budget_is_served_and_one_above_is_refused(served: Any) -> None:
    _run_encoded(served, [encode_png(np.zeros((64, 64), np.uint8))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="65 x 64|\\[65\\] \\[x\\] \\[64\\]"):
        _run_encoded(served, [encode_png(np.zeros((65, 64), np.uint8))])


def test_jpeg_over_the_budget_and_other_formats_are_refused(served: Any) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(buf, format="JPEG")
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixel budget"):
        _run_encoded(served, [buf.getvalue()])
    gif = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(gif, format="GIF")
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a PNG or JPEG"):
        _run_encoded(served, [gif.getvalue()])
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated PNG"):
        _run_encoded(served, [b"\x89PNG\r\n\x1a\n\0\0"])


def test_predict_pixels_checks_the_budget_too(served: Any) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixels: image of.*pixel budget"):
        _run_pixels(served, np.zeros((1, 100, 100), np.uint8))


# -- warmup and the model record -------------------------------------------------------------------


def test_export_writes_warmup_requests_that_the_saved_model_answers(export_dir: Path, served: Any) -> None:
    from tensorflow.core.framework import types_pb2

    requests = read_warmup_requests(export_dir / WARMUP_RELPATH)
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "predict_pixels"]
    encoded, pixels = requests
    assert encoded.inputs["image_bytes"].dtype == types_pb2.DT_STRING
    assert encoded.inputs["image_bytes"].string_val[0] == encode_png(reference_image(PATCH))
    assert pixels.inputs["pixels"].dtype == types_pb2.DT_UINT8
    assert [d.size for d in pixels.inputs["pixels"].tensor_shape.dim] == [1, PATCH, PATCH]


def test_export_stores_metadata_evaluation_and_reference_answer(export_dir: Path, served: Any) -> None:
    meta = json.loads((export_dir / METADATA_RELPATH).read_text())
    assert meta["backbone"] == "tiny" and meta["test_metrics"]["macro_auc"] == 0.81  # what the gate reads
    assert meta["class_names"] == list(CLASS_NAMES) and meta["image_size"] == PATCH
    assert meta["max_image_pixels"] == BUDGET
    answer = _run_encoded(served, [encode_png(reference_image(PATCH))])
    np.testing.assert_allclose(meta["reference_prediction"]["probabilities"], answer["probabilities"][0], atol=1e-7)
    assert json.loads((export_dir / "assets.extra" / "evaluation.json").read_text()) == EVALUATION


def test_export_when_class_names_do_not_match_outputs_raises_and_leaves_nothing(tmp_path: Path) -> None:
    model = save_tiny_keras_model(tmp_path / "model.keras")
    with pytest.raises(ValueError, match="5 outputs but 3 class names"):
        export_serving_model(model, tmp_path / "export", class_names=("a", "b", "c"))
    assert not (tmp_path / "export").exists()


def test_export_that_fails_midway_removes_its_partial_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "write_warmup_requests", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_serving_model(save_tiny_keras_model(tmp_path / "m.keras"), tmp_path / "export")
    assert not (tmp_path / "export").exists()


# -- the temporary workspace -----------------------------------------------------------------------


def test_workspace_is_removed_on_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with export_workspace(tmp_path) as work:
            (work / "export").mkdir()
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_workspaces_of_live_owners_are_kept_and_of_dead_ones_removed(tmp_path: Path) -> None:
    live, dead = tmp_path / f"{export.WORKSPACE_PREFIX}live", tmp_path / f"{export.WORKSPACE_PREFIX}dead"
    for folder, pid in ((live, os.getpid()), (dead, _dead_pid())):
        folder.mkdir()
        (folder / "owner.pid").write_text(str(pid))
    assert remove_stale_workspaces(tmp_path) == [dead.name]
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)
