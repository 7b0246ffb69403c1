"""Client side of the served model: ``mammo predict`` on a local SavedModel, over gRPC or over REST.

Every path reads PNG / DICOM inputs the same way (:func:`load_image`: the documented 8-bit mapping
of :mod:`mammo.components.imaging`, so a 12-bit DICOM becomes the same 8-bit image as in training),
optionally resizes on the client (``size``: PIL Lanczos, the resampler that made the training
patches; by default the served graph resizes), and calls one of the two signatures of
:mod:`mammo.components.deploy.logic`:

* ``serving_default`` (default): the image as an 8-bit PNG, input ``image_bytes`` (string);
* ``predict_pixels``: the raw uint8 pixels, input ``pixels`` ``[n, H, W]``.

Request bodies follow TF Serving's documented formats (built by :func:`rest_request_body` and
:func:`grpc_predict_request`):

* REST, row format, ``POST /v1/models/<name>[/versions/<v>]:predict``::

      {"signature_name": "serving_default", "instances": [{"b64": "<base64 PNG>"}, ...]}
      {"signature_name": "predict_pixels", "instances": [[[0, 12, ...], ...], ...]}

* gRPC ``PredictionService/Predict``: ``PredictRequest`` with ``model_spec`` (name, signature,
  optional version) and one ``TensorProto`` input (``DT_STRING [n]`` or ``DT_UINT8 [n, H, W]``).

Each call returns one dict per file (JSON-ready)::

    {"file": "a.png", "class_name": "mass_malignant", "class_index": 3,
     "probabilities": {"calc_benign": 0.01, ..., "normal": 0.02}}

Class names come from the served model's own ``class_names`` output, so a client never depends on
its local copy of ``CLASS_NAMES`` matching the model.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mammo.components.deploy.logic import DEFAULT_SIGNATURE, PIXELS_SIGNATURE, SIGNATURE_INPUTS
from mammo.components.imaging import encode_png, read_image_uint8, resize_uint8

logger = logging.getLogger(__name__)

#: images sent per request / per local call
BATCH_SIZE = 32
SIGNATURES = (DEFAULT_SIGNATURE, PIXELS_SIGNATURE)


def load_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """A PNG / TIFF / JPEG / DICOM file as a uint8 ``[H, W]`` image (documented 8-bit mapping),
    resized to ``size`` x ``size`` with the training resampler when ``size`` is given."""
    image = read_image_uint8(path)
    return resize_uint8(image, int(size)) if size else image


def load_patch(path: str | Path, size: int) -> np.ndarray:
    """A file as the uint8 ``[size, size, 1]`` patch the model sees (mapping + training resampler)."""
    return load_image(path, size)[:, :, np.newaxis]


def _check_signature(signature: str) -> None:
    if signature not in SIGNATURES:
        raise ValueError(f"unknown signature {signature!r}; choose one of {SIGNATURES}")


def _batches(
    image_paths: Sequence[str | Path], signature: str, size: int | None
) -> Iterable[tuple[list[str], list[np.ndarray]]]:
    """``(files, images)`` chunks of at most :data:`BATCH_SIZE`; for ``predict_pixels`` each chunk
    also holds images of one shape only (a uint8 tensor is rectangular)."""
    files: list[str] = []
    images: list[np.ndarray] = []
    for path in image_paths:
        image = load_image(path, size)
        if images and (len(images) == BATCH_SIZE or (signature == PIXELS_SIGNATURE and image.shape != images[0].shape)):
            yield files, images
            files, images = [], []
        files.append(str(path))
        images.append(image)
    if images:
        yield files, images


def rest_request_body(signature: str, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """A TF Serving REST predict body in the row format (see the module docstring)."""
    _check_signature(signature)
    if signature == DEFAULT_SIGNATURE:
        # single input -> instances are the values themselves; a binary string is {"b64": ...}
        instances: list[Any] = [{"b64": base64.b64encode(encode_png(image)).decode("ascii")} for image in images]
    else:
        instances = [np.asarray(image, dtype=np.uint8).tolist() for image in images]
    return {"signature_name": signature, "instances": instances}


def grpc_predict_request(model_name: str, signature: str, images: Sequence[np.ndarray], version: int | None = None) -> Any:
    """A ``tensorflow.serving.PredictRequest`` for ``images`` (see the module docstring)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    _check_signature(signature)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    if signature == DEFAULT_SIGNATURE:
        tensor = tf.make_tensor_proto([encode_png(image) for image in images], dtype=tf.string, shape=[len(images)])
    else:
        tensor = tf.make_tensor_proto(np.stack(images).astype(np.uint8), dtype=tf.uint8)
    request.inputs[SIGNATURE_INPUTS[signature]].CopyFrom(tensor)
    return request


def _to_results(files: Sequence[str], outputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Turn the signature's column outputs (numpy / lists; strings as bytes or str) into result dicts."""
    probabilities = np.asarray(outputs["probabilities"], dtype=np.float64)
    class_index = np.asarray(outputs["class_index"]).reshape(-1)
    class_name = [_text(v) for v in np.asarray(outputs["class_name"], dtype=object).reshape(-1)]
    class_names = np.asarray(outputs["class_names"], dtype=object)
    if len(class_name) != len(files) or probabilities.shape[0] != len(files):
        raise RuntimeError(f"the model answered {len(class_name)} predictions for {len(files)} images")
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


def predict_local(
    model_dir: str | Path,
    image_paths: Sequence[str | Path],
    signature: str = DEFAULT_SIGNATURE,
    size: int | None = None,
) -> list[dict[str, Any]]:
    """Classify ``image_paths`` with an exported SavedModel directory (a version directory or an export)."""
    import tensorflow as tf

    _check_signature(signature)
    loaded = tf.saved_model.load(str(model_dir))
    fn = loaded.signatures[signature]
    logger.info("predicting %d image(s) with %s (%s)", len(image_paths), model_dir, signature)
    results: list[dict[str, Any]] = []
    for files, images in _batches(image_paths, signature, size):
        if signature == DEFAULT_SIGNATURE:
            inputs = tf.constant([encode_png(image) for image in images], dtype=tf.string)
        else:
            inputs = tf.constant(np.stack(images), dtype=tf.uint8)
        outputs = fn(**{SIGNATURE_INPUTS[signature]: inputs})
        results.extend(_to_results(files, {k: v.numpy() for k, v in outputs.items()}))
    return results


# -- gRPC ------------------------------------------------------------------------------------


def predict_grpc(
    host_port: str,
    model_name: str,
    image_paths: Sequence[str | Path],
    size: int | None = None,
    timeout_s: float = 30,
    version: int | None = None,
    signature: str = DEFAULT_SIGNATURE,
) -> list[dict[str, Any]]:
    """Classify ``image_paths`` through TF Serving's gRPC ``PredictionService/Predict`` at ``host_port``."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    _check_signature(signature)
    results: list[dict[str, Any]] = []
    with grpc.insecure_channel(host_port) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for files, images in _batches(image_paths, signature, size):
            request = grpc_predict_request(model_name, signature, images, version)
            response = stub.Predict(request, timeout=timeout_s)
            outputs = {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}
            results.extend(_to_results(files, outputs))
    return results


# -- REST ------------------------------------------------------------------------------------


def predict_rest(
    url: str,
    model_name: str,
    image_paths: Sequence[str | Path],
    size: int | None = None,
    timeout_s: float = 30,
    version: int | None = None,
    signature: str = DEFAULT_SIGNATURE,
) -> list[dict[str, Any]]:
    """Classify ``image_paths`` through TF Serving's REST API at ``url`` (e.g. ``http://host:8501``).

    Posts :func:`rest_request_body` to ``{url}/v1/models/{model_name}[/versions/{version}]:predict``.
    """
    _check_signature(signature)
    base = f"{url.rstrip('/')}/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")
    results: list[dict[str, Any]] = []
    for files, images in _batches(image_paths, signature, size):
        answer = _http_json(f"{base}:predict", rest_request_body(signature, images), timeout_s)
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(files):
            raise RuntimeError(f"unexpected answer from {base}:predict: {str(answer)[:300]}")
        # row format with several outputs: one {output name: value} object per instance
        columns = {key: [row[key] for row in predictions] for key in predictions[0]}
        results.extend(_to_results(files, columns))
    return results


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
    except urllib.error.URLError as err:
        raise RuntimeError(f"{url}: unreachable: {err.reason}") from None
