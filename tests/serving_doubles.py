"""Shared by ``test_deploy.py`` and ``test_predict.py``: tiny models, inputs, and TF Serving test doubles.

The TF Serving binary (``tensorflow_model_server``) cannot run in the test environment, so its two
APIs are played by in-process **test doubles** that run the real exported SavedModel:

* :class:`FakeTFServingREST`: TF Serving's REST API (model status, metadata, predict) on
  ``http.server``;
* :class:`FakeTFServingGRPC`: TF Serving's gRPC ``PredictionService`` (``Predict``,
  ``GetModelMetadata``) on ``grpc.server``.

Both follow TF Serving's documented behaviour where the clients depend on it: the REST row
(``instances``) and column (``inputs``) formats, ``{"b64": ...}`` for binary strings, int64 fields
as JSON strings, ``{"error": ...}`` bodies with 400 / 404, ``NOT_FOUND`` for unknown models, and
(with ``model_base_path``) the ``latest`` version policy over a watched model directory.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mammo.components.config import CLASS_NAMES

PATCH = 16


# -- tiny models and inputs ----------------------------------------------------------------------


def save_tiny_keras_model(path: Path, size: int = PATCH, n_classes: int = len(CLASS_NAMES), seed: int = 0) -> Path:
    """A small model with the training step's contract: raw 0..255 pixels in, softmax out."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.save(path)
    return path


_EXPORTS: dict[tuple[Any, ...], Path] = {}


def tiny_export(seed: int = 0, metadata: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None,
                size: int = PATCH, **kwargs: Any) -> Path:
    """An exported serving SavedModel of :func:`save_tiny_keras_model` (made once per test process and
    argument set, in a temporary folder removed at exit). Treat it as read-only."""
    import atexit
    import shutil
    import tempfile

    from mammo.components.deploy.export import export_serving_model

    key = (seed, json.dumps(metadata, sort_keys=True), json.dumps(evaluation, sort_keys=True), size,
           json.dumps(kwargs, sort_keys=True))
    if key not in _EXPORTS or not _EXPORTS[key].is_dir():
        folder = Path(tempfile.mkdtemp(prefix="mammo-test-export-"))
        atexit.register(shutil.rmtree, folder, True)
        model = save_tiny_keras_model(folder / "model.keras", size=size, seed=seed)
        _EXPORTS[key] = export_serving_model(model, folder / "export", metadata=metadata, evaluation=evaluation,
                                             **kwargs)
    return _EXPORTS[key]


def random_patches(n: int, size: int = PATCH, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 1] with a different mean per image (so the classes differ)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size, size, 1))
    shift = np.linspace(-100, 100, n).reshape(n, 1, 1, 1)
    return np.clip(base + shift, 0, 255).astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, bits_stored: int = 12, pixel_spacing_mm: float | None = None) -> Path:
    """A minimal single-frame 16-bit-allocated MONOCHROME2 mammogram DICOM (pydicom 3), with
    ``PixelSpacing`` when ``pixel_spacing_mm`` is given."""
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
    if pixel_spacing_mm:
        ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def signature_def_map(model_dir: Path) -> Any:
    """The ``SignatureDefMap`` TF Serving returns as a SavedModel's metadata (internal signatures dropped)."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(model_dir) / "saved_model.pb").read_bytes())
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in saved.meta_graphs[0].signature_def.items():
        if not key.startswith("__"):
            signature_map.signature_def[key].CopyFrom(value)
    return signature_map


def closed_port_url() -> str:
    """A URL on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- the model directory a double serves -----------------------------------------------------------


class _Servables:
    """What a TF Serving double serves: one fixed SavedModel, or the ``latest`` version of a watched
    ``model_base_path`` (integer sub-directories with a ``saved_model.pb``), as TF Serving does."""

    def __init__(self, model_dir: Path | None, version: int, model_base_path: Path | None) -> None:
        self._fixed = (int(version), Path(model_dir)) if model_dir else None
        self._base = Path(model_base_path) if model_base_path else None
        self._version = int(version)
        self._loaded: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def versions(self) -> dict[int, Path]:
        if self._base is not None:
            if not self._base.is_dir():
                return {}
            found = {
                int(p.name): p
                for p in self._base.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()
            }
            # the default ("latest") version policy: only the highest version is served
            return {max(found): found[max(found)]} if found else {}
        if self._fixed is not None:
            return {self._fixed[0]: self._fixed[1]}
        return {self._version: None}  # status only (no model behind it)

    def resolve(self, version: int | None) -> tuple[int, Path | None] | None:
        versions = self.versions()
        if not versions:
            return None
        if version is None:
            version = max(versions)
        return (version, versions[version]) if version in versions else None

    def load(self, model_dir: Path) -> Any:
        import tensorflow as tf

        with self._lock:
            if model_dir not in self._loaded:
                self._loaded[model_dir] = tf.saved_model.load(str(model_dir))
            return self._loaded[model_dir]


# -- REST ------------------------------------------------------------------------------------------


class FakeTFServingREST:
    """Test double for TF Serving's REST API (it stands in for the ``tensorflow_model_server``
    binary, which cannot run in the test environment).

    An ``http.server`` on ``127.0.0.1`` (free port) in a background thread:

    * ``GET /v1/models/<name>[/versions/<v>]``: model status; each call returns the next entry of
      ``states`` (the last one repeats), e.g. ``("LOADING", "AVAILABLE")``; versions are JSON
      strings; an unknown model or version is a 404, as in TF Serving.
    * ``GET /v1/models/<name>[/versions/<v>]/metadata``: the SavedModel's ``signature_def`` map.
    * ``POST /v1/models/<name>[/versions/<v>]:predict``: row (``instances``) or column (``inputs``)
      format, ``{"b64": ...}`` for string tensors; runs the named signature of the real SavedModel.

    Serves either ``model_dir`` as ``version``, or the highest complete version found under
    ``model_base_path`` at each request. ``requests`` holds ``(method, path)``, ``bodies`` the
    parsed JSON of every POST.
    """

    _PATH = re.compile(
        r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:predict)?$"
    )

    def __init__(
        self,
        model_name: str,
        model_dir: Path | None = None,
        version: int = 1,
        states: Sequence[str] = ("AVAILABLE",),
        model_base_path: Path | None = None,
    ) -> None:
        self.model_name = model_name
        self.states = list(states)
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[dict[str, Any]] = []
        self._servables = _Servables(model_dir, version, model_base_path)
        self._status_calls = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def status_calls(self) -> int:
        return self._status_calls

    def __enter__(self) -> "FakeTFServingREST":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802
                fake._dispatch(self, "GET", None)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                fake._dispatch(self, "POST", self.rfile.read(length))

        return Handler

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        path = urllib.parse.urlparse(handler.path).path
        self.requests.append((method, path))
        match = self._PATH.match(path)
        if not match:
            return self._reply(handler, 404, {"error": f"Malformed request: {method} {path}"})
        name, version, rest = match["name"], match["version"], match["rest"]
        if name != self.model_name:
            return self._reply(handler, 404, {"error": f"Could not find any versions of model {name}"})
        resolved = self._servables.resolve(int(version) if version else None)
        if resolved is None:
            what = f"version {version} of model {name}" if version else f"any versions of model {name}"
            return self._reply(handler, 404, {"error": f"Could not find {what}"})
        served_version, model_dir = resolved
        if method == "GET" and rest is None:
            return self._reply(handler, 200, self._status(served_version))
        if model_dir is None:
            return self._reply(handler, 404, {"error": f"Servable not found for request: Latest({name})"})
        if method == "GET" and rest == "/metadata":
            return self._reply(handler, 200, self._metadata(served_version, model_dir))
        if method == "POST" and rest == ":predict":
            try:
                request = json.loads(body or b"{}")
                self.bodies.append(request)
                return self._reply(handler, 200, self._predict(self._servables.load(model_dir), request))
            except Exception as err:  # TF Serving answers a bad request with 400 + {"error": ...}
                return self._reply(handler, 400, {"error": f"{type(err).__name__}: {err}"})
        return self._reply(handler, 404, {"error": f"Malformed request: {method} {path}"})

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _status(self, version: int) -> dict[str, Any]:
        with self._lock:
            state = self.states[min(self._status_calls, len(self.states) - 1)]
            self._status_calls += 1
        status = {"error_code": "OK", "error_message": ""}
        return {"model_version_status": [{"version": str(version), "state": state, "status": status}]}

    def _metadata(self, version: int, model_dir: Path) -> dict[str, Any]:
        from google.protobuf import json_format

        signature_map = json_format.MessageToDict(signature_def_map(model_dir), preserving_proto_field_name=True)
        return {
            "model_spec": {"name": self.model_name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": signature_map},
        }

    def _predict(self, loaded: Any, request: dict[str, Any]) -> dict[str, Any]:
        unknown = set(request) - {"signature_name", "instances", "inputs"}
        if unknown or ("instances" in request) == ("inputs" in request):
            raise ValueError(f"body must hold exactly one of 'instances' / 'inputs' (and 'signature_name'), got {sorted(request)}")
        signature = loaded.signatures[request.get("signature_name") or "serving_default"]
        specs = signature.structured_input_signature[1]
        if "instances" in request:
            rows = request["instances"]
            if not isinstance(rows, list) or not rows:
                raise ValueError("'instances' must be a non-empty list")
            named = isinstance(rows[0], dict) and "b64" not in rows[0]
            if not named and len(specs) != 1:
                raise ValueError("unnamed instances need a signature with exactly one input")
            if not named:
                rows = [{next(iter(specs)): row} for row in rows]
            columns = {key: [row[key] for row in rows] for key in specs}
        else:
            inputs = request["inputs"]
            columns = inputs if isinstance(inputs, dict) else {next(iter(specs)): inputs}
        tensors = {key: self._to_tensor(key, columns[key], spec) for key, spec in specs.items()}
        outputs = {key: value.numpy() for key, value in signature(**tensors).items()}
        as_json = {key: self._to_json(key, value) for key, value in outputs.items()}
        if "instances" in request:
            n = len(next(iter(as_json.values())))
            return {"predictions": [{key: as_json[key][i] for key in as_json} for i in range(n)]}
        return {"outputs": as_json}

    @staticmethod
    def _to_tensor(key: str, values: Any, spec: Any) -> Any:
        import tensorflow as tf

        if spec.dtype == tf.string:
            decoded = [base64.b64decode(v["b64"], validate=True) if isinstance(v, dict) else v.encode() for v in values]
            return tf.constant(decoded, dtype=tf.string)
        array = np.asarray(values)
        if spec.dtype == tf.uint8 and (array.min() < 0 or array.max() > 255 or not np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{key}: DT_UINT8 values must be integers in 0..255")
        tensor = tf.constant(array, dtype=spec.dtype)
        if not spec.shape.is_compatible_with(tensor.shape):
            raise ValueError(f"{key}: shape {tensor.shape} does not match the signature's {spec.shape}")
        return tensor

    @staticmethod
    def _to_json(key: str, value: np.ndarray) -> Any:
        if value.dtype == object:
            convert = (lambda b: {"b64": base64.b64encode(b).decode()}) if key.endswith("_bytes") else bytes.decode
            return np.vectorize(convert, otypes=[object])(value).tolist()
        return value.tolist()


# -- gRPC ------------------------------------------------------------------------------------------


class FakeTFServingGRPC:
    """Test double for TF Serving's gRPC ``PredictionService`` (it stands in for the
    ``tensorflow_model_server`` binary, which cannot run in the test environment).

    An in-process ``grpc.server`` on ``127.0.0.1`` (free port) whose servicer implements ``Predict``
    by running the named signature of the real SavedModel, and ``GetModelMetadata`` by returning
    its ``signature_def`` map. Unknown model names or versions are ``NOT_FOUND``, a request whose
    inputs do not match the signature ``INVALID_ARGUMENT``, as in TF Serving. Every
    ``PredictRequest`` is kept in ``requests``.
    """

    def __init__(self, model_name: str, model_dir: Path | None = None, version: int = 1,
                 model_base_path: Path | None = None) -> None:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.model_name = model_name
        self.requests: list[Any] = []
        self._servables = _Servables(model_dir, version, model_base_path)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self._servicer(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeTFServingGRPC":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    def _resolve(self, model_spec: Any, context: Any) -> tuple[int, Path]:
        import grpc

        if model_spec.name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({model_spec.name})")
        resolved = self._servables.resolve(model_spec.version.value if model_spec.HasField("version") else None)
        if resolved is None or resolved[1] is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {model_spec}")
        return resolved

    def _servicer(self) -> Any:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

        fake = self

        class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802
                fake.requests.append(request)
                version, model_dir = fake._resolve(request.model_spec, context)
                signature_name = request.model_spec.signature_name or "serving_default"
                signature = fake._servables.load(model_dir).signatures[signature_name]
                specs = signature.structured_input_signature[1]
                if set(request.inputs) != set(specs):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"inputs {sorted(request.inputs)} do not match {signature_name}'s {sorted(specs)}")
                inputs = {}
                for key, proto in request.inputs.items():
                    if proto.dtype != specs[key].dtype.as_datatype_enum:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"input {key}: dtype {proto.dtype} != {specs[key].dtype.name}")
                    inputs[key] = tf.constant(tf.make_ndarray(proto))
                try:
                    outputs = signature(**inputs)
                except tf.errors.InvalidArgumentError as err:  # TF Serving: INVALID_ARGUMENT + the op's message
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.message)
                response = predict_pb2.PredictResponse()
                response.model_spec.name = fake.model_name
                response.model_spec.signature_name = signature_name
                response.model_spec.version.value = version
                for key, value in outputs.items():
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
                return response

            def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
                version, model_dir = fake._resolve(request.model_spec, context)
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = fake.model_name
                response.model_spec.version.value = version
                response.metadata["signature_def"].Pack(signature_def_map(model_dir))
                return response

        return Servicer()
