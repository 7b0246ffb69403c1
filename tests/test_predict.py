"""``mammo predict``: PNG / DICOM inputs, a local SavedModel, TF Serving over REST and over gRPC.

The TF Serving binary cannot run here; REST is played by ``FakeTFServingREST`` (see
``test_deploy.py``) and gRPC by :class:`FakeTFServingGRPC`, both running the real exported SavedModel.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
grpc = pytest.importorskip("grpc")

from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from test_deploy import (  # noqa: E402
    PATCH,
    FakeTFServingREST,
    random_patches,
    save_tiny_keras_model,
    signature_def_map,
)

from mammo.components.config import CLASS_NAMES  # noqa: E402
from mammo.components.deploy.logic import export_serving_model  # noqa: E402
from mammo.components.deploy.predict import load_patch, predict_grpc, predict_local, predict_rest  # noqa: E402
from mammo.components.imaging import encode_png, resize_uint8, to_uint8  # noqa: E402


class FakeTFServingGRPC:
    """Test double for TF Serving's gRPC ``PredictionService``: it stands in for the
    ``tensorflow_model_server`` binary, which cannot run in the test environment.

    An in-process ``grpc.server`` on ``127.0.0.1`` (free port) whose servicer implements ``Predict``
    by running the named signature of the real exported SavedModel, and ``GetModelMetadata`` by
    returning its ``signature_def`` map. Unknown model names are ``NOT_FOUND``, as in TF Serving.
    Every ``PredictRequest`` is kept in ``requests``.
    """

    def __init__(self, model_name: str, model_dir: Path, version: int = 1) -> None:
        self.model_name = model_name
        self.version = version
        self.model_dir = Path(model_dir)
        self.loaded = tf.saved_model.load(str(model_dir))
        self.requests: list[predict_pb2.PredictRequest] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self._Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeTFServingGRPC":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    def _check_model(self, model_spec: Any, context: Any) -> None:
        if model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
        if model_spec.HasField("version") and model_spec.version.value != self.version:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: version {model_spec.version.value}")

    class _Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def __init__(self, fake: "FakeTFServingGRPC") -> None:
            self.fake = fake

        def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
            fake = self.fake
            fake.requests.append(request)
            fake._check_model(request.model_spec, context)
            signature_name = request.model_spec.signature_name or "serving_default"
            signature = fake.loaded.signatures[signature_name]
            inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
            outputs = signature(**inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = fake.model_name
            response.model_spec.signature_name = signature_name
            response.model_spec.version.value = fake.version
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

        def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            fake = self.fake
            fake._check_model(request.model_spec, context)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = fake.model_name
            response.model_spec.version.value = fake.version
            response.metadata["signature_def"].Pack(signature_def_map(fake.model_dir))
            return response


def write_dicom(path: Path, pixels: np.ndarray, bits_stored: int = 12) -> Path:
    """A minimal single-frame 16-bit-allocated MONOCHROME2 mammogram DICOM (pydicom 3)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


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
    """A 40x30 8-bit PNG, a 16x16 PNG and a 48x48 12-bit DICOM with different contents."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    png = folder / "patch.png"
    png.write_bytes(encode_png(rng.integers(0, 256, (40, 30)).astype(np.uint8)))
    small = folder / "small.png"
    small.write_bytes(encode_png(random_patches(1, seed=2)[0, :, :, 0]))
    dcm = write_dicom(folder / "patch.dcm", rng.integers(0, 4096, (48, 48)).astype(np.uint16), bits_stored=12)
    return {"png": png, "small": small, "dcm": dcm}


def _expected(keras_model: Any, paths: list[Path]) -> np.ndarray:
    """What the Keras model itself says on the patches the client builds."""
    batch = np.stack([load_patch(p, PATCH) for p in paths]).astype(np.float32)
    return keras_model[1].predict(batch, verbose=0)


def _assert_results(results: list[dict[str, Any]], paths: list[Path], expected: np.ndarray) -> None:
    assert [r["file"] for r in results] == [str(p) for p in paths]
    for result, probs in zip(results, expected):
        assert set(result) == {"file", "class_name", "class_index", "probabilities"}
        assert list(result["probabilities"]) == list(CLASS_NAMES)
        np.testing.assert_allclose(list(result["probabilities"].values()), probs, rtol=1e-5, atol=1e-6)
        assert result["class_index"] == int(np.argmax(probs))
        assert result["class_name"] == CLASS_NAMES[result["class_index"]]
        assert isinstance(result["class_index"], int) and isinstance(result["class_name"], str)


# -- load_patch --------------------------------------------------------------------------------


def test_load_patch_reads_png_as_square_uint8_patch(images: dict[str, Path]) -> None:
    patch = load_patch(images["png"], PATCH)
    assert patch.shape == (PATCH, PATCH, 1) and patch.dtype == np.uint8


def test_load_patch_reads_16bit_dicom_with_the_fixed_8bit_mapping(images: dict[str, Path]) -> None:
    import pydicom

    stored = pydicom.dcmread(images["dcm"]).pixel_array
    patch = load_patch(images["dcm"], 48)  # same size: no resampling, only the bit mapping
    np.testing.assert_array_equal(patch[:, :, 0], to_uint8(stored, 12))
    resized = load_patch(images["dcm"], PATCH)
    np.testing.assert_array_equal(resized[:, :, 0], resize_uint8(to_uint8(stored, 12), PATCH))


# -- local -------------------------------------------------------------------------------------


def test_predict_local_on_png_returns_class_and_probabilities(
    model_dir: Path, images: dict[str, Path], keras_model: Any
) -> None:
    paths = [images["png"], images["small"]]
    results = predict_local(model_dir, paths)
    _assert_results(results, paths, _expected(keras_model, paths))
    assert sum(results[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_local_on_dicom_matches_the_keras_model(
    model_dir: Path, images: dict[str, Path], keras_model: Any
) -> None:
    paths = [images["dcm"]]
    _assert_results(predict_local(model_dir, paths), paths, _expected(keras_model, paths))


# -- REST --------------------------------------------------------------------------------------


def test_predict_rest_against_fake_tf_serving_matches_the_keras_model(
    model_dir: Path, images: dict[str, Path], keras_model: Any
) -> None:
    paths = [images["png"], images["dcm"], images["small"]]
    with FakeTFServingREST("mammo", model_dir) as server:
        results = predict_rest(server.url, "mammo", paths, size=PATCH)
        assert server.requests == [("POST", "/v1/models/mammo:predict")]
    _assert_results(results, paths, _expected(keras_model, paths))


def test_predict_rest_without_size_reads_it_from_model_metadata(
    model_dir: Path, images: dict[str, Path], keras_model: Any
) -> None:
    paths = [images["png"]]
    with FakeTFServingREST("mammo", model_dir, version=1) as server:
        results = predict_rest(server.url, "mammo", paths, version=1)
        assert server.requests == [
            ("GET", "/v1/models/mammo/versions/1/metadata"),
            ("POST", "/v1/models/mammo/versions/1:predict"),
        ]
    _assert_results(results, paths, _expected(keras_model, paths))


def test_predict_rest_for_unknown_model_raises_with_server_error(model_dir: Path, images: dict[str, Path]) -> None:
    with FakeTFServingREST("mammo", model_dir) as server:
        with pytest.raises(RuntimeError, match="HTTP 404.*Could not find any versions of model other"):
            predict_rest(server.url, "other", [images["png"]], size=PATCH)


# -- gRPC --------------------------------------------------------------------------------------


def test_predict_grpc_against_fake_prediction_service_matches_the_keras_model(
    model_dir: Path, images: dict[str, Path], keras_model: Any
) -> None:
    paths = [images["png"], images["dcm"]]
    with FakeTFServingGRPC("mammo", model_dir) as server:
        results = predict_grpc(server.host_port, "mammo", paths, size=PATCH)
        (request,) = server.requests
    assert request.model_spec.name == "mammo" and request.model_spec.signature_name == "serving_default"
    assert list(request.inputs) == ["images"]
    assert tf.make_ndarray(request.inputs["images"]).shape == (2, PATCH, PATCH, 1)
    _assert_results(results, paths, _expected(keras_model, paths))


def test_predict_grpc_without_size_reads_it_from_model_metadata(
    model_dir: Path, images: dict[str, Path], keras_model: Any
) -> None:
    paths = [images["small"]]
    with FakeTFServingGRPC("mammo", model_dir) as server:
        results = predict_grpc(server.host_port, "mammo", paths)
    _assert_results(results, paths, _expected(keras_model, paths))


def test_predict_grpc_for_unknown_model_raises_not_found(model_dir: Path, images: dict[str, Path]) -> None:
    with FakeTFServingGRPC("mammo", model_dir) as server:
        with pytest.raises(grpc.RpcError) as info:
            predict_grpc(server.host_port, "other", [images["png"]], size=PATCH)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
