"""Client side of the served model: ``mammo predict`` on a local SavedModel, over gRPC or over REST.

Every path reads PNG / DICOM inputs the same way (:func:`load_patch`: the documented 8-bit mapping of
:mod:`mammo.components.imaging`, then a square resample to the model's patch size), sends raw 8-bit
pixels to the ``serving_default`` signature (see :mod:`mammo.components.deploy.logic`) and returns
one dict per file::

    {"file": "a.png", "class_name": "mass_malignant", "class_index": 3,
     "probabilities": {"calc_benign": 0.01, ..., "normal": 0.02}}

Class names come from the served model's own ``class_names`` output, so a client never depends on
its local copy of ``CLASS_NAMES`` matching the model.

For remote calls the patch size may be given; if it is not, it is read from the server's model
metadata (the ``images`` input shape of ``serving_default``).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mammo.components.deploy.logic import DEFAULT_SIGNATURE, IMAGES_INPUT
from mammo.components.imaging import read_image_uint8, resize_uint8

logger = logging.getLogger(__name__)

#: images sent per request / per local call
BATCH_SIZE = 32


def load_patch(path: str | Path, size: int) -> np.ndarray:
    """A PNG / TIFF / JPEG / DICOM file as a uint8 ``[size, size, 1]`` patch (documented 8-bit mapping)."""
    image = read_image_uint8(path)
    return resize_uint8(image, int(size))[:, :, np.newaxis]


def _batches(image_paths: Sequence[str | Path], size: int) -> Iterable[tuple[list[str], np.ndarray]]:
    """``(files, float32 [n, size, size, 1])`` chunks of at most :data:`BATCH_SIZE` images."""
    paths = [str(p) for p in image_paths]
    for start in range(0, len(paths), BATCH_SIZE):
        chunk = paths[start : start + BATCH_SIZE]
        yield chunk, np.stack([load_patch(p, size) for p in chunk]).astype(np.float32)


def _to_results(files: Sequence[str], outputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn the signature's column outputs (numpy / lists; strings as bytes or str) into result dicts."""
    probabilities = np.asarray(outputs["probabilities"], dtype=np.float64)
    class_index = np.asarray(outputs["class_index"]).reshape(-1)
    class_name = [_text(v) for v in np.asarray(outputs["class_name"], dtype=object).reshape(-1)]
    class_names = np.asarray(outputs["class_names"], dtype=object)
    results = []
    for i, file in enumerate(files):
        names = [_text(v) for v in class_names[i]]
        results.append(
            {
                "file": file,
                "class_name": class_name[i],
                "class_index": int(class_index[i]),
                "probabilities": {name: float(p) for name, p in zip(names, probabilities[i])},
            }
        )
    return results


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# -- local -----------------------------------------------------------------------------------


def predict_local(model_dir: str | Path, image_paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Classify ``image_paths`` with an exported SavedModel directory (a version directory or an export)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir))
    signature = loaded.signatures[DEFAULT_SIGNATURE]
    spec = signature.structured_input_signature[1][IMAGES_INPUT]
    size = int(spec.shape[1])
    logger.info("predicting %d image(s) with %s (patch size %d)", len(image_paths), model_dir, size)
    results: list[dict[str, Any]] = []
    for files, batch in _batches(image_paths, size):
        outputs = signature(**{IMAGES_INPUT: tf.constant(batch)})
        results.extend(_to_results(files, {k: v.numpy() for k, v in outputs.items()}))
    return results


# -- gRPC ------------------------------------------------------------------------------------


def predict_grpc(
    host_port: str,
    model_name: str,
    image_paths: Sequence[str | Path],
    size: int | None = None,
    timeout_s: float = 10,
    version: int | None = None,
) -> list[dict[str, Any]]:
    """Classify ``image_paths`` through TF Serving's gRPC ``PredictionService/Predict`` at ``host_port``."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(host_port) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        if not size:
            size = _grpc_patch_size(stub, model_name, version, timeout_s)
        results: list[dict[str, Any]] = []
        for files, batch in _batches(image_paths, size):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = DEFAULT_SIGNATURE
            if version is not None:
                request.model_spec.version.value = int(version)
            request.inputs[IMAGES_INPUT].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.float32))
            response = stub.Predict(request, timeout=timeout_s)
            outputs = {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
            results.extend(_to_results(files, outputs))
    return results


def _grpc_patch_size(stub: Any, model_name: str, version: int | None, timeout_s: float) -> int:
    """The ``images`` input side from ``PredictionService/GetModelMetadata``."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model_name
    if version is not None:
        request.model_spec.version.value = int(version)
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=timeout_s)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    dims = signature_map.signature_def[DEFAULT_SIGNATURE].inputs[IMAGES_INPUT].tensor_shape.dim
    return _size_from_dims([int(d.size) for d in dims], f"gRPC metadata of {model_name}")


# -- REST ------------------------------------------------------------------------------------


def predict_rest(
    url: str,
    model_name: str,
    image_paths: Sequence[str | Path],
    size: int | None = None,
    timeout_s: float = 30,
    version: int | None = None,
) -> list[dict[str, Any]]:
    """Classify ``image_paths`` through TF Serving's REST API at ``url`` (e.g. ``http://host:8501``).

    Sends ``{"signature_name": "serving_default", "instances": [...]}`` (row format) to
    ``POST {url}/v1/models/{model_name}[/versions/{version}]:predict``.
    """
    base = f"{url.rstrip('/')}/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")
    if not size:
        size = _rest_patch_size(base, model_name, timeout_s)
    results: list[dict[str, Any]] = []
    for files, batch in _batches(image_paths, size):
        # JSON integers are valid DT_FLOAT values for TF Serving and make the body ~2x smaller
        body = {"signature_name": DEFAULT_SIGNATURE, "instances": batch.astype(np.uint8).tolist()}
        answer = _http_json(f"{base}:predict", body, timeout_s)
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(files):
            raise RuntimeError(f"unexpected answer from {base}:predict: {str(answer)[:300]}")
        # row format with several outputs: one {output name: value} object per instance
        columns = {key: [row[key] for row in predictions] for key in predictions[0]}
        results.extend(_to_results(files, columns))
    return results


def _rest_patch_size(base: str, model_name: str, timeout_s: float) -> int:
    """The ``images`` input side from ``GET .../metadata`` (proto JSON: int64 sizes are strings)."""
    answer = _http_json(f"{base}/metadata", None, timeout_s)
    try:
        signature = answer["metadata"]["signature_def"]["signature_def"][DEFAULT_SIGNATURE]
        dims = signature["inputs"][IMAGES_INPUT]["tensor_shape"]["dim"]
        return _size_from_dims([int(d["size"]) for d in dims], f"REST metadata of {model_name}")
    except (KeyError, TypeError, ValueError) as err:
        raise RuntimeError(f"cannot read the patch size from {base}/metadata ({err!r}); pass size=") from None


def _http_json(url: str, body: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        raise RuntimeError(f"{url}: HTTP {err.code}: {detail[:500]}") from None


def _size_from_dims(dims: list[int], source: str) -> int:
    if len(dims) != 4 or dims[1] <= 0 or dims[1] != dims[2] or dims[3] != 1:
        raise RuntimeError(f"{source}: expected an input of shape [-1, S, S, 1], got {dims}")
    return dims[1]

