"""``mammo predict``: PNG / DICOM inputs, a local SavedModel, TF Serving over REST and over gRPC.

The TF Serving binary cannot run here; REST and gRPC are played by ``FakeTFServingREST`` and
``FakeTFServingGRPC`` (test doubles in ``serving_doubles.py``), both running the real exported
SavedModel. Request bodies are checked against TF Serving's documented formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
grpc = pytest.importorskip("grpc")

from serving_doubles import (  # noqa: E402
    PATCH,
    FakeTFServingGRPC,
    FakeTFServingREST,
    random_patches,
    save_tiny_keras_model,
    write_dicom,
)

from mammo.components.config import CLASS_NAMES  # noqa: E402
from mammo.components.deploy.export import export_serving_model  # noqa: E402
from mammo.components.deploy.predict import (  # noqa: E402
    load_image,
    load_patch,
    predict_grpc,
    predict_local,
    predict_rest,
)
from mammo.components.imaging import encode_png, resize_uint8, to_uint8  # noqa: E402
from mammo.pipelines.cli import main  # noqa: E402

# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = save_tiny_keras_model(tmp_path_factory.mktemp("model") / "model.keras")
    return path, keras.saving.load_model(path)


@pytest.fixture(scope="module")
def model_dir(keras_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_serving_model(keras_model[0], tmp_path_factory.mktemp("serving") / "mammo" / "1")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 40x30 8-bit PNG, a 16x16 PNG, a 16x16 12-bit DICOM and a 48x48 12-bit DICOM."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    png = folder / "patch.png"
    png.write_bytes(encode_png(rng.integers(0, 256, (40, 30)).astype(np.uint8)))
    small = folder / "small.png"
    small.write_bytes(encode_png(random_patches(1, seed=2)[0, :, :, 0]))
    small_dcm = write_dicom(folder / "small.dcm", rng.integers(0, 4096, (PATCH, PATCH)).astype(np.uint16))
    dcm = write_dicom(folder / "patch.dcm", rng.integers(0, 4096, (48, 48)).astype(np.uint16), bits_stored=12)
    return {"png": png, "small": small, "small_dcm": small_dcm, "dcm": dcm}


def _keras_on_patches(keras_model: Any, paths: list[Path]) -> np.ndarray:
    """What the Keras model itself says on the patches the client builds with ``size=PATCH``."""
    batch = np.stack([load_patch(p, PATCH) for p in paths]).astype(np.float32)
    return keras_model[1].predict(batch, verbose=0)


def _assert_results(results: list[dict[str, Any]], paths: list[Path], expected: np.ndarray, atol: float = 1e-6) -> None:
    assert [r["file"] for r in results] == [str(p) for p in paths]
    for result, probs in zip(results, expected):
        assert set(result) == {"file", "class_name", "class_index", "probabilities"}
        assert list(result["probabilities"]) == list(CLASS_NAMES)
        np.testing.assert_allclose(list(result["probabilities"].values()), probs, rtol=1e-5, atol=atol)
        assert result["class_index"] == int(np.argmax(probs))
        assert result["class_name"] == CLASS_NAMES[result["class_index"]]
        assert isinstance(result["class_index"], int) and isinstance(result["class_name"], str)


def _probabilities(results: list[dict[str, Any]]) -> np.ndarray:
    return np.array([list(r["probabilities"].values()) for r in results])


# -- reading images ----------------------------------------------------------------------------


def test_load_patch_reads_png_as_square_uint8_patch(images: dict[str, Path]) -> None:
    patch = load_patch(images["png"], PATCH)
    assert patch.shape == (PATCH, PATCH, 1) and patch.dtype == np.uint8


def test_load_image_reads_12bit_dicom_with_the_fixed_8bit_mapping(images: dict[str, Path]) -> None:
    import pydicom

    stored = pydicom.dcmread(images["dcm"]).pixel_array
    np.testing.assert_array_equal(load_image(images["dcm"]), to_uint8(stored, 12))  # no resize by default
    np.testing.assert_array_equal(load_patch(images["dcm"], PATCH)[:, :, 0], resize_uint8(to_uint8(stored, 12), PATCH))


# -- local -------------------------------------------------------------------------------------


def test_predict_local_on_png_and_dicom_matches_the_keras_model(
    model_dir: Path, images: dict[str, Path], keras_model: Any
) -> None:
    paths = [images["small"], images["small_dcm"], images["png"], images["dcm"]]
    results = predict_local(model_dir, paths, size=PATCH)  # client resize = the training patches' resampler
    _assert_results(results, paths, _keras_on_patches(keras_model, paths))
    assert sum(results[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_local_default_lets_the_model_resize_close_to_the_training_resampler(
    model_dir: Path, images: dict[str, Path], keras_model: Any
) -> None:
    paths = [images["png"], images["dcm"]]
    # TF's in-graph lanczos3 vs PIL's Lanczos: at most one grey level apart
    _assert_results(predict_local(model_dir, paths), paths, _keras_on_patches(keras_model, paths), atol=2e-3)


def test_predict_local_pixels_signature_answers_like_serving_default(model_dir: Path, images: dict[str, Path]) -> None:
    paths = [images["png"], images["small"], images["dcm"]]  # three shapes: three pixel batches
    encoded = predict_local(model_dir, paths)
    pixels = predict_local(model_dir, paths, signature="predict_pixels")
    np.testing.assert_allclose(_probabilities(pixels), _probabilities(encoded), rtol=1e-6, atol=1e-7)


def test_predict_local_with_unknown_signature_raises(model_dir: Path, images: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown signature 'images'"):
        predict_local(model_dir, [images["png"]], signature="images")


# -- REST --------------------------------------------------------------------------------------


@pytest.mark.parametrize("signature", ["serving_default", "predict_pixels"])
def test_predict_rest_against_fake_tf_serving_matches_local(
    model_dir: Path, images: dict[str, Path], signature: str
) -> None:
    paths = [images["png"], images["dcm"], images["small"]]
    with FakeTFServingREST("mammo", model_dir) as server:
        results = predict_rest(server.url, "mammo", paths, signature=signature, size=PATCH)
        assert server.requests == [("POST", "/v1/models/mammo:predict")]
        (body,) = server.bodies
    assert body["signature_name"] == signature and len(body["instances"]) == 3
    local = predict_local(model_dir, paths, size=PATCH)
    _assert_results(results, paths, _probabilities(local))


def test_predict_rest_of_a_version_posts_to_its_url(model_dir: Path, images: dict[str, Path]) -> None:
    with FakeTFServingREST("mammo", model_dir, version=4) as server:
        results = predict_rest(server.url, "mammo", [images["small"]], version=4)
        assert server.requests == [("POST", "/v1/models/mammo/versions/4:predict")]
    assert results[0]["file"] == str(images["small"])


def test_predict_rest_for_unknown_model_answers_each_file_with_the_server_error(
    model_dir: Path, images: dict[str, Path]
) -> None:
    with FakeTFServingREST("mammo", model_dir) as server:
        (answer,) = predict_rest(server.url, "other", [images["png"]])
    assert answer["file"] == str(images["png"])
    assert answer["error"].startswith("ServingError: ") and "HTTP 404: Could not find any versions of model other" in answer["error"]


# -- gRPC --------------------------------------------------------------------------------------


@pytest.mark.parametrize("signature", ["serving_default", "predict_pixels"])
def test_predict_grpc_against_fake_prediction_service_matches_local(
    model_dir: Path, images: dict[str, Path], keras_model: Any, signature: str
) -> None:
    paths = [images["small"], images["small_dcm"]]  # patch-sized: exactly the Keras model's answer
    with FakeTFServingGRPC("mammo", model_dir) as server:
        results = predict_grpc(server.host_port, "mammo", paths, signature=signature)
        (request,) = server.requests
    assert request.model_spec.name == "mammo" and request.model_spec.signature_name == signature
    _assert_results(results, paths, _keras_on_patches(keras_model, paths))


def test_predict_grpc_for_unknown_model_answers_not_found(model_dir: Path, images: dict[str, Path]) -> None:
    with FakeTFServingGRPC("mammo", model_dir) as server:
        (answer,) = predict_grpc(server.host_port, "other", [images["png"]])
    assert "NOT_FOUND" in answer["error"]


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_predict_over_rest_and_grpc_prints_the_same_json_as_local(
    model_dir: Path, images: dict[str, Path], capsys: Any
) -> None:
    paths = [str(images["png"]), str(images["dcm"])]
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), *paths]) == 0
    local = json.loads(capsys.readouterr().out)
    with FakeTFServingREST("mammo", model_dir) as rest, FakeTFServingGRPC("mammo", model_dir) as grpc_server:
        assert main(["predict", "--rest", rest.url, *paths]) == 0
        over_rest = json.loads(capsys.readouterr().out)
        assert main(["predict", "--server", grpc_server.host_port, "--signature", "predict_pixels", *paths]) == 0
        over_grpc = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in local] == paths
    for remote in (over_rest, over_grpc):
        assert [(r["file"], r["class_name"], r["class_index"]) for r in remote] == \
            [(r["file"], r["class_name"], r["class_index"]) for r in local]
        np.testing.assert_allclose(_probabilities(remote), _probabilities(local), rtol=1e-6, atol=1e-7)
