"""The served artifact: a self-contained TF Serving SavedModel with two signatures and its records.

:func:`export_serving_model` wraps the trained Keras model (whose backbone preprocessing is already
inside it) in two signatures that decode, add the channel axis and resize inside the graph, and put
the class names in the outputs::

    serving_default   image_bytes  string [None]           PNG (8- or 16-bit) / JPEG, any size
    predict_pixels    pixels       uint8  [None, H, W]     8-bit grayscale, any (batch-uniform) size

    outputs: probabilities float32 [None, 5], class_index int64 [None],
             class_name string [None], class_names string [None, 5]

``image_bytes`` ends in ``_bytes``: TF Serving's REST API takes it as ``{"b64": ...}``. A 16-bit PNG
is mapped to 8 bits with the fixed ``value * 255 / 65535`` mapping of
:mod:`mammo.components.imaging`; DICOM (and 12-bit data) is converted by the client with that
module first (``mammo predict`` does). Images not at the model's patch size are resized inside the
graph (Lanczos-3, antialiased, as close as TF gets to the PIL Lanczos used to make the patches).

**Pixel budget.** Before decoding, the graph reads the image's size from its header (PNG: the
IHDR chunk's width and height bytes; JPEG: ``extract_jpeg_shape``, which parses the header only)
and refuses images with more than ``max_image_pixels`` pixels, or any other format, with an
``INVALID_ARGUMENT`` error naming the budget: a small PNG that inflates to gigabytes is never
decoded. ``predict_pixels`` checks the same budget on its input's shape.

The export carries, in ``assets.extra/`` (not loaded as part of the model by TF Serving):
``tf_serving_warmup_requests`` (one ``PredictionLog`` per signature, replayed by TF Serving before
it reports the version AVAILABLE), the model record (the gate reads it back: metrics, the
exported model's own answer to the warmup image, the patch's physical size for heatmaps), the
evaluation record and the model card.

Exports are written into a temporary folder of this process (:func:`export_workspace`); folders
left behind by a crashed process are removed by the next export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from mammo.components.config import CLASS_NAMES
from mammo.components.contracts import (
    ASSETS_EXTRA, EVALUATION_RECORD, MODEL_CARD, MODEL_RECORD, SAVED_MODEL_PB, WARMUP_REQUESTS,
)

logger = logging.getLogger(__name__)

#: signature names and tensor names of the serving contract (see the module docstring)
DEFAULT_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "predict_pixels"
ENCODED_INPUT = "image_bytes"
PIXELS_INPUT = "pixels"
SIGNATURE_INPUTS = {DEFAULT_SIGNATURE: ENCODED_INPUT, PIXELS_SIGNATURE: PIXELS_INPUT}
OUTPUT_KEYS = ("probabilities", "class_index", "class_name", "class_names")

#: files inside an export / a version directory (``assets.extra`` is not part of the loaded model)
METADATA_RELPATH = Path(ASSETS_EXTRA) / MODEL_RECORD
WARMUP_RELPATH = Path(ASSETS_EXTRA) / WARMUP_REQUESTS
EVALUATION_RELPATH = Path(ASSETS_EXTRA) / EVALUATION_RECORD
MODEL_CARD_RELPATH = Path(ASSETS_EXTRA) / MODEL_CARD

#: temporary export folders: ``<tmp>/mammo-export-<random>/`` holding the owner's pid
WORKSPACE_PREFIX = "mammo-export-"
_OWNER_FILE = "owner.pid"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


# -- the temporary workspace -------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_workspaces(parent: str | Path | None = None) -> list[str]:
    """Remove export folders whose owning process is gone (a crash, kill -9); returns their names."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for path in parent.glob(WORKSPACE_PREFIX + "*"):
        try:
            pid = int((path / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            # no owner record: stale only when old (a live export writes its owner file first)
            try:
                if time.time() - path.stat().st_mtime < 3600:
                    continue
            except OSError:
                continue
            pid = -1
        if pid == os.getpid() or (pid > 0 and _pid_alive(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    if removed:
        logger.info("removed export folders left by crashed processes: %s", removed)
    return removed


@contextlib.contextmanager
def export_workspace(parent: str | Path | None = None) -> Iterator[Path]:
    """A temporary folder for one export, removed on exit (also on errors); stale ones go first."""
    remove_stale_workspaces(parent)
    path = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=parent))
    try:
        (path / _OWNER_FILE).write_text(str(os.getpid()))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the export --------------------------------------------------------------------------------


def export_serving_model(
    keras_model_path: str | Path,
    export_dir: str | Path,
    class_names: Sequence[str] = CLASS_NAMES,
    metadata: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    model_name: str = "mammo",
    max_image_pixels: int = 64_000_000,
) -> Path:
    """Export a trained ``.keras`` model as a TF Serving SavedModel with the two signatures above.

    Args:
        keras_model_path: the training step's model; input ``(S, S, 1)`` raw 0..255 pixels, output
            softmax over ``class_names`` (in that order).
        export_dir: directory to write the SavedModel to (must not exist or be empty); removed again
            if the export fails.
        metadata: the model record (backbone, ``test_metrics`` read by the gate, ``data``, ``patch_mm``
            and ``pixel_spacing_mm`` for heatmaps, ...): stored as given plus the exported graph's facts.
        evaluation: the evaluation record (``validation`` / ``test`` metrics), stored and summarised in
            the model card.
        model_name: the served name written into the warmup requests.
        max_image_pixels: the pixel budget checked inside the graph before decoding.
    """
    export_dir = Path(export_dir)
    if export_dir.exists() and any(export_dir.iterdir()):
        raise FileExistsError(f"export directory {export_dir} is not empty")
    if max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
    try:
        return _export(Path(keras_model_path), export_dir, class_names, metadata, evaluation, model_name,
                       int(max_image_pixels))
    except BaseException:
        shutil.rmtree(export_dir, ignore_errors=True)
        raise


def _export(keras_model_path: Path, export_dir: Path, class_names: Sequence[str], metadata: dict[str, Any] | None,
            evaluation: dict[str, Any] | None, model_name: str, max_pixels: int) -> Path:
    import keras
    import tensorflow as tf

    from mammo.components.contracts import write_json
    from mammo.components.deploy.model_card import render_model_card

    model = keras.saving.load_model(str(keras_model_path), compile=False)
    size = _model_input_size(model, keras_model_path)
    n_outputs = int(model.output_shape[-1])
    if n_outputs != len(class_names):
        raise ValueError(f"{keras_model_path}: the model has {n_outputs} outputs but {len(class_names)} "
                         "class names were given")
    logger.info("exporting %s (patch %dx%d, %d classes) to %s", keras_model_path, size, size, n_outputs, export_dir)
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
    def serve_encoded(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(lambda data: _decode_to_patch(data, size, max_pixels), image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))
        return _outputs(images)

    def serve_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(_pixels_to_patches(pixels, size, max_pixels))

    archive = keras.export.ExportArchive()
    archive.track(model)
    # TF Serving calls serving_default when a request names no signature; naming it explicitly keeps
    # that independent of registration order.
    archive.add_endpoint(name=DEFAULT_SIGNATURE, fn=serve_encoded,
                         input_signature=[tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)])
    archive.add_endpoint(name=PIXELS_SIGNATURE, fn=serve_pixels,
                         input_signature=[tf.TensorSpec([None, None, None], tf.uint8, name=PIXELS_INPUT)])
    archive.write_out(str(export_dir), verbose=False)

    write_warmup_requests(export_dir / WARMUP_RELPATH, model_name, reference_image(size))
    # Run the warmup requests through the SavedModel just written, as TF Serving will when it loads
    # it (a failing warmup fails the load there): a broken export fails here, not in the cluster.
    reference = _run_warmup_requests(export_dir)

    description = describe(metadata, class_names, size, reference, max_pixels)
    write_json(export_dir / METADATA_RELPATH, description)
    if evaluation:
        write_json(export_dir / EVALUATION_RELPATH, evaluation)
    (export_dir / MODEL_CARD_RELPATH).write_text(render_model_card(model_name, description, evaluation))
    if not (export_dir / SAVED_MODEL_PB).is_file():
        raise RuntimeError(f"{export_dir}: the export wrote no {SAVED_MODEL_PB}")
    logger.info("wrote serving SavedModel to %s", export_dir)
    return export_dir


def _model_input_size(model: Any, source: str | Path) -> int:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 1:
        raise ValueError(f"{source}: expected a model input of shape (None, S, S, 1), got {shape}")
    return int(shape[1])


# -- graph code (no autograph: tf.cond / asserts, run inside the exported functions) -------------


def _resize_to_patch(images: Any, size: int) -> Any:
    """float32 ``[n, H, W, 1]`` 8-bit values -> ``[n, size, size, 1]`` (unchanged when already that size)."""
    import tensorflow as tf

    def _resize() -> tf.Tensor:
        resized = tf.image.resize(images, [size, size], method="lanczos3", antialias=True)
        return tf.clip_by_value(tf.round(resized), 0.0, 255.0)

    shape = tf.shape(images)
    same = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))
    out = tf.cond(same, lambda: images, _resize)
    return tf.ensure_shape(out, [None, size, size, 1])


def _header_size(data: Any) -> tuple[Any, Any, Any]:
    """``(is_png, height, width)`` (int64) of an encoded image, from its header bytes only.

    PNG: width and height are the big-endian uint32s at bytes 16..24 (inside the IHDR chunk, which
    the format requires first). JPEG: ``extract_jpeg_shape`` parses the markers, not the pixels.
    Anything else fails with INVALID_ARGUMENT.
    """
    import tensorflow as tf

    head = tf.strings.substr(data, 0, len(_PNG_MAGIC))
    is_png = tf.equal(head, _PNG_MAGIC)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    known = tf.debugging.Assert(tf.logical_or(is_png, is_jpeg),
                                ["image_bytes: not a PNG or JPEG image (only these are accepted)"])
    with tf.control_dependencies([known]):
        def _png() -> tf.Tensor:
            complete = tf.debugging.Assert(tf.strings.length(data) >= 33,
                                           ["image_bytes: truncated PNG (no complete IHDR chunk)"])
            with tf.control_dependencies([complete]):
                raw = tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8)
            b = tf.cast(raw, tf.int64)
            width = ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]
            height = ((b[4] * 256 + b[5]) * 256 + b[6]) * 256 + b[7]
            return tf.stack([height, width])

        def _jpeg() -> tf.Tensor:
            return tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)

        hw = tf.cond(is_png, _png, _jpeg)
    return is_png, hw[0], hw[1]


def _budget_check(height: Any, width: Any, max_pixels: int, what: str) -> Any:
    import tensorflow as tf

    pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
    return tf.debugging.Assert(
        tf.logical_and(tf.greater(pixels, 0), tf.less_equal(pixels, tf.constant(max_pixels, tf.int64))),
        [f"{what}: image of", height, "x", width, f"pixels is empty or exceeds the pixel budget of {max_pixels} "
         "pixels (deploy.max_image_pixels)"])


def _decode_to_patch(data: Any, size: int, max_pixels: int) -> Any:
    """One encoded image -> float32 ``[size, size, 1]`` with 8-bit values, after the budget check."""
    import tensorflow as tf

    is_png, height, width = _header_size(data)
    with tf.control_dependencies([_budget_check(height, width, max_pixels, "image_bytes")]):
        data = tf.identity(data)

    def _png() -> tf.Tensor:
        # decode at 16 bits so 16-bit PNGs keep their precision; an 8-bit PNG comes back as v * 257,
        # so the division below gives back exactly v (the imaging module's mapping for both depths).
        pixels = tf.io.decode_png(data, channels=1, dtype=tf.uint16)
        return tf.round(tf.cast(pixels, tf.float32) * (255.0 / 65535.0))

    def _jpeg() -> tf.Tensor:
        return tf.cast(tf.io.decode_jpeg(data, channels=1), tf.float32)

    image = tf.cond(is_png, _png, _jpeg)
    return _resize_to_patch(image[tf.newaxis], size)[0]


def _pixels_to_patches(pixels: Any, size: int, max_pixels: int) -> Any:
    """uint8 ``[n, H, W]`` -> float32 ``[n, size, size, 1]`` (channel axis added, resized if needed)."""
    import tensorflow as tf

    shape = tf.shape(pixels, out_type=tf.int64)
    with tf.control_dependencies([_budget_check(shape[1], shape[2], max_pixels, "pixels")]):
        pixels = tf.identity(pixels)
    return _resize_to_patch(tf.cast(pixels, tf.float32)[..., tf.newaxis], size)


# -- warmup and the reference answer -----------------------------------------------------------


def reference_image(size: int) -> Any:
    """The deterministic uint8 ``[size, size]`` test image of the warmup and post-deploy check.

    A gradient with seeded texture rather than a flat grey, so that two different models (or an old
    version still being served) give visibly different answers to it.
    """
    import numpy as np

    rng = np.random.default_rng(20230331)
    ramp = np.linspace(30.0, 220.0, size)[np.newaxis, :] * np.ones((size, 1))
    texture = rng.normal(0.0, 25.0, (size, size))
    return np.clip(np.rint(ramp + texture), 0, 255).astype(np.uint8)


def write_warmup_requests(path: Path, model_name: str, image: Any) -> Path:
    """TF Serving's warmup file: a TFRecord of ``PredictionLog``s, one ``PredictRequest`` per signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from mammo.components.deploy.serving_client import grpc_predict_request

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature in (DEFAULT_SIGNATURE, PIXELS_SIGNATURE):
            request = grpc_predict_request(model_name, signature, [image])
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: str | Path) -> list[Any]:
    """The ``PredictRequest``s of a warmup file."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        requests.append(log.predict_log.request)
    return requests


def _run_warmup_requests(export_dir: Path) -> dict[str, Any]:
    """Run every warmup request on the SavedModel; returns the answer to the serving_default one."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))
    answers: dict[str, dict[str, Any]] = {}
    for request in read_warmup_requests(export_dir / WARMUP_RELPATH):
        signature = loaded.signatures[request.model_spec.signature_name]
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        answers[request.model_spec.signature_name] = {k: v.numpy() for k, v in signature(**inputs).items()}
    default, pixels = answers[DEFAULT_SIGNATURE], answers[PIXELS_SIGNATURE]
    if not np.allclose(default["probabilities"], pixels["probabilities"], atol=1e-5):
        raise RuntimeError(f"{export_dir}: the two signatures disagree on the same image; the export is broken")
    return {
        "signature": DEFAULT_SIGNATURE,
        "image": "reference_image(image_size), PNG-encoded (see mammo.components.deploy.export)",
        "probabilities": [float(p) for p in default["probabilities"][0]],
        "class_index": int(default["class_index"][0]),
    }


def describe(metadata: dict[str, Any] | None, class_names: Sequence[str], size: int, reference: dict[str, Any],
             max_pixels: int) -> dict[str, Any]:
    """The model record: the caller's metadata plus the exported graph's facts (which win)."""
    description = dict(metadata or {})
    facts = {
        "class_names": list(class_names),
        "image_size": size,
        "inputs": {
            DEFAULT_SIGNATURE: {"name": ENCODED_INPUT, "dtype": "string", "shape": [None]},
            PIXELS_SIGNATURE: {"name": PIXELS_INPUT, "dtype": "uint8", "shape": [None, None, None]},
        },
        "signatures": [DEFAULT_SIGNATURE, PIXELS_SIGNATURE],
        "reference_prediction": reference,
        "max_image_pixels": max_pixels,
    }
    for key, value in facts.items():
        if key in description and description[key] != value:
            logger.warning("metadata %r=%r replaced by the exported model's %r", key, description[key], value)
        description[key] = value
    description.setdefault("exported_at", utc_now())
    return description


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_model_record(model_dir: str | Path) -> dict[str, Any]:
    """The model record of a local export / version directory ({} when it has none or it is not JSON)."""
    path = Path(model_dir) / METADATA_RELPATH
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning("%s: no readable model record (%s)", path, err)
        return {}
    return data if isinstance(data, dict) else {}
