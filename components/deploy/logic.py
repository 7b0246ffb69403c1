"""The deploy step: export a serving SavedModel and push it to a TF Serving model root.

TF Serving watches ``<serving_root>/<model_name>/`` and loads every sub-directory whose name is an
integer (the version); with the default version policy it serves the highest one. Three things
follow, and this module takes care of each:

* **The served artifact is self-contained.** :func:`export_serving_model` wraps the trained Keras
  model (whose preprocessing is already inside it) in two signatures and puts the class names in the
  outputs, so a client needs nothing but raw 8-bit pixels (or an encoded PNG/JPEG).
* **A version must never be seen half-written.** :func:`push_to_serving_root` copies into a hidden
  temporary sibling (its name starts with a dot and is not an integer, so TF Serving ignores it),
  copies ``saved_model.pb`` last, and then renames the directory to its integer version in one atomic
  step. An existing version is never overwritten.
* **Deployment is only done when the server says so.** :func:`wait_until_available` polls the REST
  model-status API until the new version is ``AVAILABLE``.

Serving signatures (both return the same four outputs)::

    serving_default   images       float32 [None, S, S, 1]  raw 8-bit pixel values 0..255
    predict_encoded   image_bytes  string  [None]           PNG (8- or 16-bit) / JPEG, any size

    outputs: probabilities float32 [None, 5], class_index int64 [None],
             class_name string [None], class_names string [None, 5]

``image_bytes`` ends in ``_bytes`` so TF Serving's REST API expects (and returns) it base64-encoded
as ``{"b64": ...}``. Inside ``predict_encoded`` a 16-bit PNG is mapped to 8 bits with the same fixed
``value * 255 / 65535`` mapping as :mod:`mammo.components.imaging` (no per-image stretch); DICOM files
and 12-bit data should be converted by the client with that module first (``mammo predict`` does).

A JSON description of the model (``metadata``, plus the class names and the input size) is written to
``<export>/assets.extra/mammo_model.json``; TF Serving ignores ``assets.extra``, and
:func:`current_champion` reads it back for the promotion gate.

This module must not import kfp.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from mammo.components.config import CLASS_NAMES

logger = logging.getLogger(__name__)

#: signature names and tensor names of the serving contract (see the module docstring)
DEFAULT_SIGNATURE = "serving_default"
ENCODED_SIGNATURE = "predict_encoded"
IMAGES_INPUT = "images"
ENCODED_INPUT = "image_bytes"
OUTPUT_KEYS = ("probabilities", "class_index", "class_name", "class_names")

#: where the model description lives inside an export / a version directory
METADATA_RELPATH = Path("assets.extra") / "mammo_model.json"
SAVED_MODEL_PB = "saved_model.pb"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_VERSION_NAME = re.compile(r"[0-9]+")
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class PushResult:
    """Where a push landed: the integer version and the absolute path of its directory."""

    version: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- export ----------------------------------------------------------------------------------


def export_serving_model(
    keras_model_path: str | Path,
    export_dir: str | Path,
    class_names: Sequence[str] = CLASS_NAMES,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export a trained ``.keras`` model as a TF Serving SavedModel with the two signatures above.

    Args:
        keras_model_path: the training step's model; input ``(S, S, 1)`` raw 0..255 pixels, output
            softmax over ``class_names`` (in that order).
        export_dir: directory to write the SavedModel to (must not exist or be empty).
        class_names: the label of each output index.
        metadata: extra description (backbone, metrics, ...) stored in ``assets.extra``.

    Returns:
        ``export_dir`` as a :class:`~pathlib.Path`.
    """
    import keras
    import tensorflow as tf

    export_dir = Path(export_dir)
    if export_dir.exists() and any(export_dir.iterdir()):
        raise FileExistsError(f"export directory {export_dir} is not empty")

    model = keras.saving.load_model(str(keras_model_path), compile=False)
    size = _model_input_size(model, keras_model_path)
    n_outputs = int(model.output_shape[-1])
    if n_outputs != len(class_names):
        raise ValueError(
            f"{keras_model_path}: the model has {n_outputs} outputs but {len(class_names)} class names were given"
        )
    logger.info("exporting %s (input %dx%dx1, %d classes) to %s", keras_model_path, size, size, n_outputs, export_dir)

    names = tf.constant(list(class_names), dtype=tf.string)

    def _outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tf.cast(model(images, training=False), tf.float32)
        class_index = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        batch = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "class_index": class_index,
            "class_name": tf.gather(names, class_index),
            # one row per example so that REST's row format ("predictions") stays valid:
            # it requires every output to share the batch dimension
            "class_names": tf.tile(names[tf.newaxis, :], tf.stack([batch, 1])),
        }

    # The Python argument names become the signature's input names.
    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(images)

    def serve_encoded(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda data: _decode_to_patch(data, size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32),
        )
        return _outputs(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also what TF Serving calls when a request names no signature; naming it
    # serving_default explicitly keeps that independent of registration order.
    archive.add_endpoint(
        name=DEFAULT_SIGNATURE,
        fn=serve_images,
        input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name=IMAGES_INPUT)],
    )
    archive.add_endpoint(
        name=ENCODED_SIGNATURE,
        fn=serve_encoded,
        input_signature=[tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)],
    )
    archive.write_out(str(export_dir), verbose=False)

    description = _describe(metadata, class_names, size)
    meta_path = export_dir / METADATA_RELPATH
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(description, indent=2, sort_keys=True, default=str))
    logger.info("wrote serving SavedModel to %s", export_dir)
    return export_dir


def _model_input_size(model: Any, source: str | Path) -> int:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 1:
        raise ValueError(f"{source}: expected a model input of shape (None, S, S, 1), got {shape}")
    return int(shape[1])


def _decode_to_patch(data: Any, size: int) -> Any:
    """One encoded image -> float32 [size, size, 1] with 8-bit values (graph code, no autograph)."""
    import tensorflow as tf

    def _png() -> tf.Tensor:
        # decode at 16 bits so 16-bit PNGs keep their precision; an 8-bit PNG comes back as v * 257,
        # so the division below gives back exactly v (the imaging module's mapping for both depths).
        pixels = tf.io.decode_png(data, channels=1, dtype=tf.uint16)
        return tf.round(tf.cast(pixels, tf.float32) * (255.0 / 65535.0))

    def _other() -> tf.Tensor:
        # JPEG / BMP / GIF are 8-bit; decoding them at 16 bits would scale by 256, not 257
        pixels = tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False)
        return tf.cast(pixels, tf.float32)

    is_png = tf.equal(tf.strings.substr(data, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
    image = tf.cond(is_png, _png, _other)
    image = tf.image.resize(image, [size, size], method="lanczos3", antialias=True)
    image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    return tf.ensure_shape(image, [size, size, 1])


def _describe(metadata: dict[str, Any] | None, class_names: Sequence[str], size: int) -> dict[str, Any]:
    description = dict(metadata or {})
    facts = {
        "class_names": list(class_names),
        "image_size": size,
        "input": {"name": IMAGES_INPUT, "dtype": "float32", "shape": [None, size, size, 1], "range": [0, 255]},
        "signatures": [DEFAULT_SIGNATURE, ENCODED_SIGNATURE],
    }
    for key, value in facts.items():
        # the exported graph is the truth; a caller's stale value must not contradict it
        if key in description and description[key] != value:
            logger.warning("metadata %r=%r replaced by the exported model's %r", key, description[key], value)
        description[key] = value
    description.setdefault("exported_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return description


# -- push ------------------------------------------------------------------------------------


def push_to_serving_root(
    export_dir: str | Path,
    serving_root: str | Path,
    model_name: str,
    version: int | None = None,
) -> PushResult:
    """Copy an export to ``<serving_root>/<model_name>/<version>/`` without TF Serving ever seeing it half-done.

    Args:
        export_dir: a SavedModel directory (from :func:`export_serving_model`).
        serving_root: TF Serving's model base directory (local path; ``gs://`` is not supported yet).
        model_name: the served model's name (a sub-directory of ``serving_root``).
        version: the version to create; default 1 + the highest existing integer version (1 if none).

    Raises:
        FileExistsError: the version directory already exists (versions are never overwritten).
        FileNotFoundError: ``export_dir`` holds no ``saved_model.pb``.
        NotImplementedError: ``serving_root`` is a remote URI.
    """
    _require_local(serving_root, "push_to_serving_root")
    export_dir = Path(export_dir)
    if not (export_dir / SAVED_MODEL_PB).is_file():
        raise FileNotFoundError(f"{export_dir} is not a SavedModel: {SAVED_MODEL_PB} is missing")
    model_root = Path(serving_root) / model_name
    model_root.mkdir(parents=True, exist_ok=True)

    if version is None:
        version = (max(_integer_versions(model_root), default=0)) + 1
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    target = model_root / str(version)
    if target.exists():
        raise FileExistsError(f"{target} already exists; a served version is never overwritten")

    # The temporary directory is a sibling (same filesystem, so the final rename is atomic) whose name
    # starts with a dot: TF Serving only loads integer-named directories, and the version scan below
    # skips it too, so a crashed push leaves nothing that gets served or counted.
    staging = model_root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _copy_saved_model(export_dir, staging)
        if target.exists():  # someone else pushed this version while we were copying
            raise FileExistsError(f"{target} appeared during the push; a served version is never overwritten")
        # os.rename fails on a non-empty existing target (and a racing empty one holds no model), so
        # this can never replace a loaded version.
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("pushed %s to %s (version %d)", export_dir, target, version)
    return PushResult(version=version, path=str(target.resolve()))


def _copy_saved_model(src: Path, dst: Path) -> None:
    """Copy a SavedModel with ``saved_model.pb`` last (it is what marks a SavedModel as complete)."""
    for entry in sorted(src.iterdir()):
        if entry.name == SAVED_MODEL_PB:
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name)
        else:
            shutil.copy2(entry, dst / entry.name)
    shutil.copy2(src / SAVED_MODEL_PB, dst / SAVED_MODEL_PB)


def _integer_versions(model_root: Path) -> list[int]:
    """Version numbers of ``model_root``'s integer-named sub-directories (all else ignored)."""
    if not model_root.is_dir():
        return []
    return [int(p.name) for p in model_root.iterdir() if p.is_dir() and _VERSION_NAME.fullmatch(p.name)]


def _require_local(root: str | Path, what: str) -> None:
    if _URI_SCHEME.match(str(root)):
        raise NotImplementedError(
            f"{what}: remote serving roots ({root}) are not supported yet; "
            "use a local or mounted path (e.g. a GCS bucket mounted with gcsfuse)"
        )


# -- champion --------------------------------------------------------------------------------


def current_champion(serving_root: str | Path, model_name: str) -> dict[str, Any] | None:
    """The description of the highest version under ``<serving_root>/<model_name>``, or None.

    Returns the JSON stored in the version's ``assets.extra/mammo_model.json`` with ``version`` and
    ``path`` added. A version without that file (pushed by something else) still counts as the
    champion: its dict then holds only ``version`` and ``path``, and the gate decides what that means.
    """
    _require_local(serving_root, "current_champion")
    model_root = Path(serving_root) / model_name
    versions = _integer_versions(model_root)
    if not versions:
        return None
    version = max(versions)
    path = model_root / str(version)
    meta_path = path / METADATA_RELPATH
    description: dict[str, Any] = {}
    if meta_path.is_file():
        description = json.loads(meta_path.read_text())
    else:
        logger.warning("champion %s has no %s", path, METADATA_RELPATH)
    description.update(version=version, path=str(path.resolve()))
    return description


# -- wait ------------------------------------------------------------------------------------


def wait_until_available(
    rest_url: str,
    model_name: str,
    version: int,
    timeout_s: float,
    poll_interval_s: float = 2.0,
) -> None:
    """Poll TF Serving's model-status API until ``version`` of ``model_name`` is ``AVAILABLE``.

    Uses ``GET {rest_url}/v1/models/{model_name}/versions/{version}``. A 404 (version not yet
    discovered) or an unreachable server counts as "not yet" and is retried.

    Raises:
        TimeoutError: not AVAILABLE after ``timeout_s``; the message holds the last state seen.
    """
    url = f"{rest_url.rstrip('/')}/v1/models/{model_name}/versions/{int(version)}"
    deadline = time.monotonic() + timeout_s
    last_state = "no answer yet"
    polls = 0
    while True:
        polls += 1
        last_state = _poll_version_state(url, int(version))
        if last_state == "AVAILABLE":
            logger.info("%s version %d is AVAILABLE (after %d polls)", model_name, version, polls)
            return
        logger.debug("%s version %d: %s", model_name, version, last_state)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"{model_name} version {version} not AVAILABLE at {url} after {timeout_s:g} s "
                f"({polls} polls); last state: {last_state}"
            )
        time.sleep(min(poll_interval_s, remaining))


def _poll_version_state(url: str, version: int) -> str:
    """One status request; returns the state (e.g. ``LOADING``) or a short description of the failure."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace").strip()
        return f"HTTP {err.code}: {detail[:200]}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return f"unreachable: {err}"
    for entry in body.get("model_version_status", []):
        # TF Serving writes int64 fields as JSON strings ("version": "3")
        if str(entry.get("version")) == str(version):
            state = str(entry.get("state", "UNKNOWN"))
            status = entry.get("status") or {}
            if status.get("error_message"):
                state += f" ({status.get('error_code', '')}: {status['error_message']})"
            return state
    return f"version {version} not listed"


# -- the step --------------------------------------------------------------------------------


def deploy(
    keras_model_path: str | Path,
    serving_root: str | Path,
    model_name: str,
    metadata: dict[str, Any] | None = None,
    wait_for_rest_url: str = "",
    wait_timeout_s: float = 300,
    class_names: Sequence[str] = CLASS_NAMES,
) -> PushResult:
    """Export ``keras_model_path``, push it as the next version and optionally wait until it is served."""
    _require_local(serving_root, "deploy")
    with tempfile.TemporaryDirectory(prefix="mammo-export-") as tmp:
        export_dir = export_serving_model(keras_model_path, Path(tmp) / "export", class_names, metadata)
        result = push_to_serving_root(export_dir, serving_root, model_name)
    if wait_for_rest_url:
        wait_until_available(wait_for_rest_url, model_name, result.version, wait_timeout_s)
    return result
