"""The one client of TF Serving: REST (status, predict) and gRPC (predict), plus a local SavedModel.

Deploy's wait and check and ``mammo predict`` (classification and heatmaps) all go through here.
Request bodies follow TF Serving's documented formats:

* REST, row format, ``POST /v1/models/<name>[/versions/<v>]:predict``::

      {"signature_name": "serving_default", "instances": [{"b64": "<base64 PNG>"}, ...]}
      {"signature_name": "predict_pixels", "instances": [[[0, 12, ...], ...], ...]}

  and ``GET /v1/models/<name>/versions/<v>`` for the model status.
* gRPC ``PredictionService/Predict``: ``PredictRequest`` with ``model_spec`` (name, signature,
  optional version) and one ``TensorProto`` input (``DT_STRING [n]`` or ``DT_UINT8 [n, H, W]``).

Every failure (HTTP error, unreachable server, gRPC status, malformed answer) is a
:class:`ServingError` with a one-line message naming the URL or address.

The three backends (:class:`LocalModel`, :class:`RestClient`, :class:`GrpcClient`) share one method,
``predict(signature, images) -> {output name: numpy column}``, where ``images`` is a list of uint8
``[H, W]`` arrays (for ``predict_pixels`` all of one shape).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from mammo.components.deploy.export import DEFAULT_SIGNATURE, PIXELS_SIGNATURE, SIGNATURE_INPUTS

logger = logging.getLogger(__name__)

SIGNATURES = (DEFAULT_SIGNATURE, PIXELS_SIGNATURE)


class ServingError(RuntimeError):
    """A TF Serving request failed (HTTP / gRPC error, unreachable, or an answer of the wrong shape)."""


def check_signature(signature: str) -> None:
    if signature not in SIGNATURES:
        raise ValueError(f"unknown signature {signature!r}; choose one of {SIGNATURES}")


# -- request bodies --------------------------------------------------------------------------------


def rest_request_body(signature: str, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """A TF Serving REST predict body in the row format (see the module docstring)."""
    from mammo.components.imaging import encode_png

    check_signature(signature)
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

    from mammo.components.imaging import encode_png

    check_signature(signature)
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


# -- REST ------------------------------------------------------------------------------------------


def http_json(url: str, body: Mapping[str, Any] | None = None, timeout_s: float = 30) -> dict[str, Any]:
    """GET (``body`` None) or POST JSON; the decoded JSON answer, or :class:`ServingError`."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace").strip()
        try:  # TF Serving answers {"error": "..."}
            detail = str(json.loads(detail).get("error", detail))
        except (ValueError, AttributeError):
            pass
        raise ServingError(f"{url}: HTTP {err.code}: {graph_error_message(detail)[:500]}") from None
    except urllib.error.URLError as err:
        raise ServingError(f"{url}: unreachable: {err.reason}") from None
    except (OSError, ValueError) as err:  # timeouts, resets, a body that is not JSON
        raise ServingError(f"{url}: {type(err).__name__}: {err}") from None


def model_url(rest_url: str, model_name: str, version: int | None = None) -> str:
    """``{rest_url}/v1/models/{model_name}[/versions/{version}]``."""
    return f"{rest_url.rstrip('/')}/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")


class RestClient:
    """TF Serving's REST API at ``url`` (e.g. ``http://host:8501``)."""

    def __init__(self, url: str, model_name: str, version: int | None = None, timeout_s: float = 30) -> None:
        self.url, self.model_name, self.version, self.timeout_s = url, model_name, version, timeout_s
        self.predict_url = model_url(url, model_name, version) + ":predict"

    def predict(self, signature: str, images: Sequence[np.ndarray]) -> dict[str, Any]:
        return self.send(rest_request_body(signature, images), len(images))

    def send(self, body: Mapping[str, Any], n: int) -> dict[str, Any]:
        """POST a predict body of ``n`` instances; the outputs as columns."""
        answer = http_json(self.predict_url, body, self.timeout_s)
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != n or not all(
            isinstance(row, dict) for row in predictions
        ):
            raise ServingError(f"unexpected answer from {self.predict_url}: {str(answer)[:300]}")
        # row format with several outputs: one {output name: value} object per instance
        return {key: [row[key] for row in predictions] for key in predictions[0]}

    def version_state(self, version: int, timeout_s: float = 10) -> str:
        """The state of ``version`` (e.g. ``AVAILABLE``, ``LOADING``) or a short note of why it is unknown."""
        try:
            body = http_json(model_url(self.url, self.model_name, version), None, timeout_s)
        except ServingError as err:
            return str(err)
        for entry in body.get("model_version_status", []):
            # TF Serving writes int64 fields as JSON strings ("version": "3")
            if str(entry.get("version")) == str(version):
                state = str(entry.get("state", "UNKNOWN"))
                status = entry.get("status") or {}
                if status.get("error_message"):
                    state += f" ({status.get('error_code', '')}: {status['error_message']})"
                return state
        return f"version {version} not listed"


# -- gRPC ------------------------------------------------------------------------------------------


class GrpcClient:
    """TF Serving's gRPC ``PredictionService`` at ``host:port`` (one channel for the client's life)."""

    def __init__(self, host_port: str, model_name: str, version: int | None = None, timeout_s: float = 30) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.host_port, self.model_name, self.version, self.timeout_s = host_port, model_name, version, timeout_s
        self._channel = grpc.insecure_channel(host_port, options=[("grpc.max_send_message_length", 256 << 20),
                                                                  ("grpc.max_receive_message_length", 256 << 20)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, signature: str, images: Sequence[np.ndarray]) -> dict[str, Any]:
        return self.send(grpc_predict_request(self.model_name, signature, images, self.version))

    def send(self, request: Any) -> dict[str, Any]:
        """Send a ``PredictRequest``; the outputs as numpy arrays."""
        import grpc
        import tensorflow as tf

        try:
            response = self._stub.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            code = err.code().name if hasattr(err, "code") else "UNKNOWN"
            details = graph_error_message(err.details() if hasattr(err, "details") else str(err))
            raise ServingError(f"gRPC {self.host_port} {self.model_name}: {code}: {details}") from None
        return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- local -----------------------------------------------------------------------------------------


class LocalModel:
    """An exported SavedModel directory (a version directory or an export), loaded with TF's loader."""

    def __init__(self, model_dir: str | Path) -> None:
        import tensorflow as tf

        self.model_dir = Path(model_dir)
        try:
            self._loaded = tf.saved_model.load(str(model_dir))
        except (OSError, ValueError, RuntimeError, tf.errors.OpError) as err:
            raise ServingError(f"{model_dir}: not a loadable SavedModel ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None

    def predict(self, signature: str, images: Sequence[np.ndarray]) -> dict[str, Any]:
        import tensorflow as tf

        from mammo.components.imaging import encode_png

        check_signature(signature)
        fn = self._loaded.signatures[signature]
        if signature == DEFAULT_SIGNATURE:
            inputs = tf.constant([encode_png(image) for image in images], dtype=tf.string)
        else:
            inputs = tf.constant(np.stack(images), dtype=tf.uint8)
        try:
            outputs = fn(**{SIGNATURE_INPUTS[signature]: inputs})
        except tf.errors.InvalidArgumentError as err:
            raise ServingError(f"{self.model_dir}: {graph_error_message(err.message)}") from None
        return {k: v.numpy() for k, v in outputs.items()}


def graph_error_message(message: str) -> str:
    """The readable part of a TF graph error: the failed assertion's text without TF's brackets."""
    match = re.search(r"assertion failed: (.*)", message)
    if match:
        prefix = message.split(":", 1)[0] + ": " if re.match(r"\w+Error:", message) else ""
        return prefix + re.sub(r"\]\s*\[", " ", match.group(1)).strip("[] ")
    lines = [line.strip() for line in message.splitlines() if line.strip() and "Graph execution error" not in line]
    return lines[0] if lines else message.strip()


class Backend(Protocol):
    def predict(self, signature: str, images: Sequence[np.ndarray]) -> dict[str, Any]: ...


# -- deploy: wait and check ------------------------------------------------------------------------


def wait_until_available(rest_url: str, model_name: str, version: int, timeout_s: float,
                         poll_interval_s: float = 2.0) -> None:
    """Poll the model-status API until ``version`` is ``AVAILABLE`` (404 / unreachable = not yet).

    Raises:
        TimeoutError: not AVAILABLE after ``timeout_s``; the message holds the last state seen.
    """
    client = RestClient(rest_url, model_name)
    url = model_url(rest_url, model_name, version)
    deadline = time.monotonic() + timeout_s
    polls = 0
    while True:
        polls += 1
        last_state = client.version_state(int(version))
        if last_state == "AVAILABLE":
            logger.info("%s version %d is AVAILABLE (after %d polls)", model_name, version, polls)
            return
        logger.debug("%s version %d: %s", model_name, version, last_state)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{model_name} version {version} not AVAILABLE at {url} after {timeout_s:g} s "
                               f"({polls} polls); last state: {last_state}")
        time.sleep(min(poll_interval_s, remaining))


def check_served_prediction(rest_url: str, model_name: str, version: int, image: np.ndarray,
                            expected: Mapping[str, Any], atol: float = 1e-3, timeout_s: float = 60) -> dict[str, Any]:
    """Send ``image`` (uint8 ``[H, W]``, as PNG through ``serving_default``) to ``version`` over REST
    and compare the answer with the local SavedModel's ``expected`` probabilities.

    ``atol`` absorbs CPU/GPU arithmetic differences.

    Raises:
        RuntimeError: the request failed (:class:`ServingError`) or the probabilities differ.
    """
    client = RestClient(rest_url, model_name, version, timeout_s)
    try:
        outputs = client.predict(DEFAULT_SIGNATURE, [image])
        served = [float(p) for p in outputs["probabilities"][0]]
    except ServingError as err:
        raise ServingError(f"post-deploy check: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ServingError(f"post-deploy check: unexpected answer from {client.predict_url} ({err!r})") from None
    local = [float(p) for p in expected["probabilities"]]
    diff = max((abs(a - b) for a, b in zip(served, local)), default=math.inf) if len(served) == len(local) else math.inf
    if diff > atol:
        raise ServingError(
            f"post-deploy check: {model_name} version {version} at {rest_url} answers {served} but the local "
            f"SavedModel answers {local} (max difference {diff:.3g} > {atol:g}): the server is not serving this model")
    logger.info("post-deploy check: %s version %d answers as the local SavedModel (max diff %.2g)", model_name, version, diff)
    return {"url": client.predict_url, "probabilities": served, "max_abs_difference": diff}
