"""Deploy, serving client: TF Serving's REST and gRPC request formats, waiting for a version, the
post-deploy check, and one-line errors. REST and gRPC are played by ``FakeTFServingREST`` and
``FakeTFServingGRPC`` (test doubles in ``serving_doubles.py`` running the real SavedModel)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")

from serving_doubles import PATCH, FakeTFServingGRPC, FakeTFServingREST, closed_port_url, random_patches, tiny_export  # noqa: E402
from tensorflow.core.framework import types_pb2  # noqa: E402

from mammo.components.deploy.export import METADATA_RELPATH, reference_image  # noqa: E402
from mammo.components.deploy.serving_client import (  # noqa: E402
    GrpcClient,
    LocalModel,
    RestClient,
    ServingError,
    check_served_prediction,
    grpc_predict_request,
    rest_request_body,
    wait_until_available,
)
from mammo.components.imaging import decode_png, encode_png  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def export_dir() -> Path:
    return tiny_export()


@pytest.fixture(scope="module")
def export_b() -> Path:
    return tiny_export(seed=7)


# -- request formats -------------------------------------------------------------------------------


def test_rest_body_for_serving_default_is_row_format_with_b64_pngs() -> None:
    images = [random_patches(1, seed=s)[0, :, :, 0] for s in (1, 2)]
    body = rest_request_body("serving_default", images)
    assert set(body) == {"signature_name", "instances"} and body["signature_name"] == "serving_default"
    assert all(set(instance) == {"b64"} for instance in body["instances"])
    blobs = [base64.b64decode(instance["b64"], validate=True) for instance in body["instances"]]
    assert all(blob.startswith(PNG_MAGIC) for blob in blobs)
    for blob, image in zip(blobs, images):
        np.testing.assert_array_equal(decode_png(blob), image)
    json.dumps(body)  # JSON-serialisable as it is


def test_rest_body_for_predict_pixels_is_row_format_with_nested_integer_lists() -> None:
    image = random_patches(1, size=5)[0, :, :, 0]
    body = rest_request_body("predict_pixels", [image])
    assert body == {"signature_name": "predict_pixels", "instances": [image.astype(int).tolist()]}


def test_grpc_request_carries_model_spec_and_one_typed_tensor() -> None:
    images = [random_patches(1, seed=s)[0, :, :, 0] for s in (1, 2)]
    request = grpc_predict_request("mammo", "serving_default", images, version=3)
    assert (request.model_spec.name, request.model_spec.signature_name) == ("mammo", "serving_default")
    assert request.model_spec.version.value == 3
    (key,) = request.inputs
    assert key == "image_bytes" and request.inputs[key].dtype == types_pb2.DT_STRING
    assert [d.size for d in request.inputs[key].tensor_shape.dim] == [2]
    pixels = grpc_predict_request("mammo", "predict_pixels", images)
    assert not pixels.model_spec.HasField("version")
    assert list(pixels.inputs) == ["pixels"] and pixels.inputs["pixels"].dtype == types_pb2.DT_UINT8
    np.testing.assert_array_equal(tf.make_ndarray(pixels.inputs["pixels"]), np.stack(images))


def test_unknown_signature_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signature 'images'"):
        rest_request_body("images", [])


# -- the three backends answer alike ---------------------------------------------------------------


def test_rest_grpc_and_local_backends_give_the_same_probabilities(export_dir: Path) -> None:
    windows = list(random_patches(3)[..., 0])
    local = LocalModel(export_dir).predict("predict_pixels", windows)["probabilities"]
    with FakeTFServingREST("mammo", export_dir) as rest, FakeTFServingGRPC("mammo", export_dir) as server:
        over_rest = RestClient(rest.url, "mammo").predict("serving_default", windows)["probabilities"]
        with GrpcClient(server.host_port, "mammo") as client:
            over_grpc = client.predict("predict_pixels", windows)["probabilities"]
    np.testing.assert_allclose(np.asarray(over_rest), local, atol=1e-6)
    np.testing.assert_allclose(over_grpc, local, atol=1e-7)


def test_errors_are_one_line_serving_errors(export_dir: Path, tmp_path: Path) -> None:
    with FakeTFServingREST("mammo", export_dir) as rest:
        with pytest.raises(ServingError, match="HTTP 404: Could not find any versions of model other$"):
            RestClient(rest.url, "other").predict("serving_default", [np.zeros((4, 4), np.uint8)])
    with FakeTFServingGRPC("mammo", export_dir) as server, GrpcClient(server.host_port, "other") as client:
        with pytest.raises(ServingError, match="NOT_FOUND"):
            client.predict("serving_default", [np.zeros((4, 4), np.uint8)])
    with pytest.raises(ServingError, match="unreachable"):
        RestClient(closed_port_url(), "mammo", timeout_s=2).predict("serving_default", [np.zeros((4, 4), np.uint8)])
    with pytest.raises(ServingError, match="not a loadable SavedModel"):
        LocalModel(tmp_path)


# -- wait and check --------------------------------------------------------------------------------


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
    png = encode_png(reference_image(PATCH))
    with FakeTFServingREST("mammo", export_dir, version=1) as server:
        check = check_served_prediction(server.url, "mammo", 1, reference_image(PATCH), meta["reference_prediction"])
        (body,) = server.bodies
    assert server.requests == [("POST", "/v1/models/mammo/versions/1:predict")]
    assert body == {"signature_name": "serving_default", "instances": [{"b64": base64.b64encode(png).decode()}]}
    assert check["max_abs_difference"] < 1e-6


def test_check_when_the_server_answers_with_another_model_raises(export_dir: Path, export_b: Path) -> None:
    meta = json.loads((export_dir / METADATA_RELPATH).read_text())
    with FakeTFServingREST("mammo", export_b, version=1) as server:
        with pytest.raises(RuntimeError, match="not serving this model"):
            check_served_prediction(server.url, "mammo", 1, reference_image(PATCH), meta["reference_prediction"])
