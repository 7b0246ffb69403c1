"""Deploy step: export a serving SavedModel, push it as a TF Serving version, read the champion, wait.

The TF Serving binary (``tensorflow_model_server``) cannot run here, so the REST API is played by
:class:`FakeTFServingREST`, an in-process test double that runs the real exported SavedModel.
The helpers at the top are shared with ``test_predict.py``.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from mammo.components.config import CLASS_NAMES  # noqa: E402
from mammo.components.deploy import logic  # noqa: E402
from mammo.components.deploy.logic import (  # noqa: E402
    METADATA_RELPATH,
    PushResult,
    current_champion,
    deploy,
    export_serving_model,
    push_to_serving_root,
    wait_until_available,
)
from mammo.components.imaging import encode_png, resize_uint8, to_uint8  # noqa: E402

PATCH = 16
METADATA = {"backbone": "tiny", "metrics": {"test": {"macro_auc": 0.81}}}


# -- shared helpers (also imported by test_predict.py) ------------------------------------------


def save_tiny_keras_model(path: Path, size: int = PATCH, n_classes: int = len(CLASS_NAMES)) -> Path:
    """A small model with the training step's contract: raw 0..255 pixels in, softmax out."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.save(path)
    return path


def random_patches(n: int, size: int = PATCH, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 1] with a different mean per image (so the classes differ)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size, size, 1))
    shift = np.linspace(-100, 100, n).reshape(n, 1, 1, 1)
    return np.clip(base + shift, 0, 255).astype(np.uint8)


def signature_def_map(model_dir: Path) -> dict[str, Any]:
    """The ``signature_def`` metadata TF Serving returns for a SavedModel, as proto JSON."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((model_dir / "saved_model.pb").read_bytes())
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, value in saved.meta_graphs[0].signature_def.items():
        if not key.startswith("__"):
            signature_map.signature_def[key].CopyFrom(value)
    return signature_map


class FakeTFServingREST:
    """Test double for TF Serving's REST API: it stands in for the ``tensorflow_model_server`` binary,
    which cannot run in the test environment.

    An ``http.server`` on ``127.0.0.1`` (free port) in a background thread, serving one model version:

    * ``GET /v1/models/<name>/versions/<v>``: model status. Each call returns the next entry of
      ``states`` (the last one repeats), e.g. ``("LOADING", "LOADING", "AVAILABLE")``; the version
      is a JSON string and unknown models / versions are 404s, as in TF Serving.
    * ``GET /v1/models/<name>[/versions/<v>]/metadata``: the SavedModel's ``signature_def`` map.
    * ``POST /v1/models/<name>[/versions/<v>]:predict``: row (``instances``) or column (``inputs``)
      format; runs the named signature of the real SavedModel; ``*_bytes`` tensors as ``{"b64": ...}``.

    Every request is appended to ``requests`` as ``(method, path)``.
    """

    def __init__(
        self,
        model_name: str,
        model_dir: Path | None = None,
        version: int = 1,
        states: Sequence[str] = ("AVAILABLE",),
    ) -> None:
        self.model_name = model_name
        self.version = version
        self.states = list(states)
        self.requests: list[tuple[str, str]] = []
        self._model_dir = Path(model_dir) if model_dir else None
        self._loaded = tf.saved_model.load(str(model_dir)) if model_dir else None
        self._status_calls = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeTFServingREST":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def status_calls(self) -> int:
        return self._status_calls

    # -- request handling ------------------------------------------------------------------------
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

    _PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:predict)?$")

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str, body: bytes | None) -> None:
        path = urllib.parse.urlparse(handler.path).path
        self.requests.append((method, path))
        match = self._PATH.match(path)
        if not match:
            return self._reply(handler, 404, {"error": f"Malformed request: {method} {path}"})
        name, version, rest = match["name"], match["version"], match["rest"]
        if name != self.model_name:
            return self._reply(handler, 404, {"error": f"Could not find any versions of model {name}"})
        if version is not None and int(version) != self.version:
            return self._reply(handler, 404, {"error": f"Could not find version {version} of model {name}"})
        if method == "GET" and rest is None:
            return self._reply(handler, 200, self._status())
        if self._loaded is None:
            return self._reply(handler, 404, {"error": f"Servable not found for request: Latest({name})"})
        if method == "GET" and rest == "/metadata":
            return self._reply(handler, 200, self._metadata())
        if method == "POST" and rest == ":predict":
            try:
                return self._reply(handler, 200, self._predict(json.loads(body or b"{}")))
            except Exception as err:  # TF Serving answers a bad request with 400 + {"error": ...}
                return self._reply(handler, 400, {"error": str(err)})
        return self._reply(handler, 404, {"error": f"Malformed request: {method} {path}"})

    def _reply(self, handler: BaseHTTPRequestHandler, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _status(self) -> dict[str, Any]:
        with self._lock:
            state = self.states[min(self._status_calls, len(self.states) - 1)]
            self._status_calls += 1
        status = {"error_code": "OK", "error_message": ""}
        return {"model_version_status": [{"version": str(self.version), "state": state, "status": status}]}

    def _metadata(self) -> dict[str, Any]:
        from google.protobuf import json_format

        signature_map = json_format.MessageToDict(signature_def_map(self._model_dir), preserving_proto_field_name=True)
        return {
            "model_spec": {"name": self.model_name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": signature_map},
        }

    def _predict(self, request: dict[str, Any]) -> dict[str, Any]:
        signature = self._loaded.signatures[request.get("signature_name") or "serving_default"]
        specs = signature.structured_input_signature[1]
        if "instances" in request:
            rows = request["instances"]
            if len(specs) == 1 and not (rows and isinstance(rows[0], dict)):
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
        if spec.dtype == tf.string:
            import base64

            values = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode() for v in values]
            return tf.constant(values, dtype=tf.string)
        return tf.constant(np.asarray(values), dtype=spec.dtype)

    @staticmethod
    def _to_json(key: str, value: np.ndarray) -> Any:
        if value.dtype == object:
            import base64

            convert = (lambda b: {"b64": base64.b64encode(b).decode()}) if key.endswith("_bytes") else bytes.decode
            return np.vectorize(convert, otypes=[object])(value).tolist()
        return value.tolist()


def closed_port_url() -> str:
    """A URL on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_keras_model(tmp_path_factory.mktemp("model") / "model.keras")


@pytest.fixture(scope="module")
def export_dir(keras_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_serving_model(keras_model_path, tmp_path_factory.mktemp("export") / "export", metadata=METADATA)


@pytest.fixture(scope="module")
def served(export_dir: Path) -> Any:
    return tf.saved_model.load(str(export_dir))


def _run(served: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    outputs = served.signatures["serving_default"](images=tf.constant(images, dtype=tf.float32))
    return {key: value.numpy() for key, value in outputs.items()}


def _run_encoded(served: Any, blobs: list[bytes]) -> dict[str, np.ndarray]:
    outputs = served.signatures["predict_encoded"](image_bytes=tf.constant(blobs, dtype=tf.string))
    return {key: value.numpy() for key, value in outputs.items()}


# -- export ------------------------------------------------------------------------------------


def test_export_serving_default_takes_images_and_returns_four_outputs(served: Any) -> None:
    signature = served.signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == ["images"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, PATCH, PATCH, 1]
    outputs = signature.structured_outputs
    assert sorted(outputs) == ["class_index", "class_name", "class_names", "probabilities"]
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape.as_list() == [None, 5]
    assert outputs["class_index"].dtype == tf.int64 and outputs["class_index"].shape.as_list() == [None]
    assert outputs["class_name"].dtype == tf.string and outputs["class_name"].shape.as_list() == [None]
    assert outputs["class_names"].dtype == tf.string and outputs["class_names"].shape.as_list() == [None, 5]


def test_export_predict_encoded_takes_image_bytes(served: Any) -> None:
    signature = served.signatures["predict_encoded"]
    (spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == ["image_bytes"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    assert sorted(signature.structured_outputs) == ["class_index", "class_name", "class_names", "probabilities"]


def test_export_outputs_match_the_keras_model_and_name_the_classes(served: Any, keras_model_path: Path) -> None:
    images = random_patches(4).astype(np.float32)
    out = _run(served, images)
    expected = keras.saving.load_model(keras_model_path).predict(images, verbose=0)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["class_index"], expected.argmax(axis=1))
    assert [n.decode() for n in out["class_name"]] == [CLASS_NAMES[i] for i in expected.argmax(axis=1)]
    assert out["class_names"].shape == (4, 5)
    assert all([n.decode() for n in row] == list(CLASS_NAMES) for row in out["class_names"])


def test_predict_encoded_on_png_of_patch_size_equals_serving_default(served: Any) -> None:
    patches = random_patches(3)
    blobs = [encode_png(p[:, :, 0]) for p in patches]
    encoded, raw = _run_encoded(served, blobs), _run(served, patches.astype(np.float32))
    np.testing.assert_allclose(encoded["probabilities"], raw["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(encoded["class_name"], raw["class_name"])


def test_predict_encoded_on_larger_png_resizes_inside_the_graph(served: Any) -> None:
    big = random_patches(1, size=40, seed=3)[0, :, :, 0]
    encoded = _run_encoded(served, [encode_png(big)])
    # PIL's Lanczos (the client / training resize) and TF's lanczos3 differ by at most 1 grey level
    raw = _run(served, resize_uint8(big, PATCH).astype(np.float32)[np.newaxis, :, :, np.newaxis])
    np.testing.assert_allclose(encoded["probabilities"], raw["probabilities"], atol=1e-3)


def test_predict_encoded_on_16bit_png_uses_the_fixed_8bit_mapping(served: Any) -> None:
    from PIL import Image

    values = np.random.default_rng(5).integers(0, 65536, (PATCH, PATCH)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    encoded = _run_encoded(served, [buf.getvalue()])
    raw = _run(served, to_uint8(values, 16).astype(np.float32)[np.newaxis, :, :, np.newaxis])
    np.testing.assert_allclose(encoded["probabilities"], raw["probabilities"], rtol=1e-5, atol=1e-6)


def test_export_writes_metadata_json_to_assets_extra(export_dir: Path) -> None:
    meta = json.loads((export_dir / "assets.extra" / "mammo_model.json").read_text())
    assert meta["backbone"] == "tiny" and meta["metrics"]["test"]["macro_auc"] == 0.81
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["image_size"] == PATCH
    assert meta["signatures"] == ["serving_default", "predict_encoded"]


def test_export_when_class_names_do_not_match_outputs_raises(keras_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="5 outputs but 3 class names"):
        export_serving_model(keras_model_path, tmp_path / "export", class_names=("a", "b", "c"))


# -- push --------------------------------------------------------------------------------------


def test_push_when_root_empty_creates_version_1(export_dir: Path, tmp_path: Path) -> None:
    result = push_to_serving_root(export_dir, tmp_path / "serving", "mammo")
    version_dir = tmp_path / "serving" / "mammo" / "1"
    assert result == PushResult(version=1, path=str(version_dir.resolve()))
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "variables" / "variables.index").is_file()
    assert (version_dir / METADATA_RELPATH).is_file()
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1"]  # no temp dir left behind


def test_push_when_version_1_exists_creates_version_2(export_dir: Path, tmp_path: Path) -> None:
    push_to_serving_root(export_dir, tmp_path, "mammo")
    result = push_to_serving_root(export_dir, tmp_path, "mammo")
    assert result.version == 2
    assert (tmp_path / "mammo" / "2" / "saved_model.pb").is_file()
    assert (tmp_path / "mammo" / "1" / "saved_model.pb").is_file()


def test_push_ignores_temp_and_other_non_integer_dirs(export_dir: Path, tmp_path: Path) -> None:
    model_root = tmp_path / "mammo"
    for name in ("3", ".tmp-9-deadbeef", "latest", "10abc"):
        (model_root / name).mkdir(parents=True)
    (model_root / "12").write_text("a file, not a version directory")
    assert push_to_serving_root(export_dir, tmp_path, "mammo").version == 4


def test_push_when_target_version_exists_raises_and_keeps_it(export_dir: Path, tmp_path: Path) -> None:
    existing = tmp_path / "mammo" / "5"
    existing.mkdir(parents=True)
    (existing / "marker").write_text("served")
    with pytest.raises(FileExistsError, match="never overwritten"):
        push_to_serving_root(export_dir, tmp_path, "mammo", version=5)
    assert [p.name for p in existing.iterdir()] == ["marker"]
    assert sorted(p.name for p in existing.parent.iterdir()) == ["5"]  # the staging dir was removed


def test_push_copies_saved_model_pb_last_into_a_hidden_staging_dir(
    export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real_copy2 = shutil.copy2

    def spying_copy2(src: Any, dst: Any, **kwargs: Any) -> Any:
        dst = Path(dst)
        if dst.name == "saved_model.pb":
            seen["staging"] = dst.parent
            seen["present"] = {p.relative_to(dst.parent).as_posix() for p in dst.parent.rglob("*") if p.is_file()}
            seen["target_exists"] = (tmp_path / "mammo" / "1").exists()
        return real_copy2(src, dst, **kwargs)

    monkeypatch.setattr(logic.shutil, "copy2", spying_copy2)
    push_to_serving_root(export_dir, tmp_path, "mammo")
    assert seen["staging"].name.startswith(".") and seen["staging"].parent == tmp_path / "mammo"
    assert {"variables/variables.index", "assets.extra/mammo_model.json", "fingerprint.pb"} <= seen["present"]
    assert "saved_model.pb" not in seen["present"]
    assert seen["target_exists"] is False  # the version appears only by the final rename


def test_push_when_export_has_no_saved_model_pb_raises(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        push_to_serving_root(tmp_path / "export", tmp_path / "serving", "mammo")


def test_push_to_gcs_root_raises_not_implemented(export_dir: Path) -> None:
    with pytest.raises(NotImplementedError, match="gs://bucket/models"):
        push_to_serving_root(export_dir, "gs://bucket/models", "mammo")


# -- champion ----------------------------------------------------------------------------------


def test_champion_when_nothing_served_is_none(tmp_path: Path) -> None:
    assert current_champion(tmp_path, "mammo") is None
    (tmp_path / "mammo" / ".tmp-1-abc").mkdir(parents=True)
    assert current_champion(tmp_path, "mammo") is None


def test_champion_is_the_metadata_of_the_highest_version(export_dir: Path, tmp_path: Path) -> None:
    push_to_serving_root(export_dir, tmp_path / "serving", "mammo")
    second = tmp_path / "second"
    shutil.copytree(export_dir, second)
    newer = {"backbone": "xception", "metrics": {"test": {"macro_auc": 0.9}}}
    (second / METADATA_RELPATH).write_text(json.dumps(newer))
    push_to_serving_root(second, tmp_path / "serving", "mammo")
    (tmp_path / "serving" / "mammo" / ".tmp-3-abc").mkdir()
    champion = current_champion(tmp_path / "serving", "mammo")
    assert champion is not None
    assert champion["backbone"] == "xception" and champion["metrics"]["test"]["macro_auc"] == 0.9
    assert champion["version"] == 2 and champion["path"].endswith("/mammo/2")


def test_champion_without_metadata_file_has_version_and_path_only(tmp_path: Path) -> None:
    (tmp_path / "mammo" / "7").mkdir(parents=True)
    assert current_champion(tmp_path, "mammo") == {"version": 7, "path": str((tmp_path / "mammo" / "7").resolve())}


# -- wait --------------------------------------------------------------------------------------


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


# -- the step ----------------------------------------------------------------------------------


def test_deploy_exports_pushes_and_waits_until_available(keras_model_path: Path, tmp_path: Path) -> None:
    with FakeTFServingREST("mammo", version=1, states=("AVAILABLE",)) as fake:
        result = deploy(keras_model_path, tmp_path, "mammo", METADATA, wait_for_rest_url=fake.url, wait_timeout_s=30)
        assert fake.requests == [("GET", "/v1/models/mammo/versions/1")]
    assert result.version == 1 and (Path(result.path) / "saved_model.pb").is_file()
    champion = current_champion(tmp_path, "mammo")
    assert champion is not None and champion["backbone"] == "tiny" and champion["version"] == 1
