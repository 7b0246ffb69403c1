"""The deploy step: export a serving SavedModel and push it to a TF Serving model repository.

TF Serving watches ``<serving_root>/<model_name>/`` (a local folder or ``gs://bucket/prefix``) and
loads every sub-directory whose name is an integer (the version); with the default version policy
it serves the highest one. This module keeps that repository healthy:

* **The served artifact is self-contained.** :func:`export_serving_model` wraps the trained Keras
  model (whose backbone preprocessing is already inside it) in two signatures that decode, add the
  channel axis and resize inside the graph, and put the class names in the outputs. The export
  carries, in ``assets.extra/`` (which TF Serving does not load as part of the model):
  ``tf_serving_warmup_requests`` (TF Serving's warmup file: one ``PredictionLog`` per signature),
  ``mammo_model.json`` (the description the promotion gate reads back, with the exported model's
  own answer to the warmup image), ``evaluation.json`` (the evaluation record) and
  ``model_card.md`` (data, splits, metrics with intervals, intended use, limitations).
* **A version is never seen half-written, and never overwritten.** :func:`push_to_serving_root`
  stages the copy under a dot-name (not an integer, so TF Serving and the version scan ignore it),
  copies ``saved_model.pb`` last (a SavedModel without it cannot be loaded) and then publishes:
  on disk by one atomic ``rename``; on GCS (which has no rename) by server-side copies into the
  version prefix, ``saved_model.pb`` last, each with the precondition "object does not exist yet".
  A push interrupted at any point leaves either nothing under an integer name or an integer prefix
  without ``saved_model.pb``, which TF Serving cannot load and this module does not count as a
  version to serve (tensorflow/serving#1086 describes what a partial copy does otherwise).
* **New versions only go up.** The new version is 1 + the highest integer name present, complete
  or not, so a number TF Serving may already have tried is never reused.
* **Old versions go, rollbacks are new versions.** :func:`prune_versions` keeps the last K complete
  versions. :func:`rollback` re-publishes a copy of an earlier version as a new highest version:
  TF Serving's default ``latest`` policy then serves it without any server reconfiguration, it
  works the same on disk, GCS and KServe, and the promotion gate's champion (the highest complete
  version) is the rolled-back model. (Pinning versions with a ``models.config`` and version labels
  is the other option: ``manifests/serving/overlays/models-config``.)
* **Deployment is only done when the server says so.** :func:`wait_until_available` polls the REST
  model-status API until the new version is ``AVAILABLE``; :func:`check_served_prediction` then
  sends one real prediction to that version and compares it with the local SavedModel's answer.

Serving signatures (both return the same four outputs)::

    serving_default   image_bytes  string [None]           PNG (8- or 16-bit) / JPEG, any size
    predict_pixels    pixels       uint8  [None, H, W]     8-bit grayscale, any (batch-uniform) size

    outputs: probabilities float32 [None, 5], class_index int64 [None],
             class_name string [None], class_names string [None, 5]

``image_bytes`` ends in ``_bytes``: TF Serving's REST API takes it as ``{"b64": ...}``. A 16-bit PNG
is mapped to 8 bits with the fixed ``value * 255 / 65535`` mapping of
:mod:`mammo.components.imaging`; DICOM (and 12-bit data) is converted by the client with that module
first (``mammo predict`` does). Images not already at the model's patch size are resized inside the
graph (Lanczos-3, antialiased, as close as TF gets to the PIL Lanczos used to make the patches).

This module must not import kfp.
"""

from __future__ import annotations

import base64
import json
import logging
import math
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
from typing import Any, Mapping, Sequence

from mammo.components.config import CLASS_NAMES

logger = logging.getLogger(__name__)

#: signature names and tensor names of the serving contract (see the module docstring)
DEFAULT_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "predict_pixels"
ENCODED_INPUT = "image_bytes"
PIXELS_INPUT = "pixels"
SIGNATURE_INPUTS = {DEFAULT_SIGNATURE: ENCODED_INPUT, PIXELS_SIGNATURE: PIXELS_INPUT}
OUTPUT_KEYS = ("probabilities", "class_index", "class_name", "class_names")

#: files inside an export / a version directory (``assets.extra`` is not part of the loaded model)
ASSETS_EXTRA = Path("assets.extra")
METADATA_RELPATH = ASSETS_EXTRA / "mammo_model.json"
WARMUP_RELPATH = ASSETS_EXTRA / "tf_serving_warmup_requests"
EVALUATION_RELPATH = ASSETS_EXTRA / "evaluation.json"
MODEL_CARD_RELPATH = ASSETS_EXTRA / "model_card.md"
SAVED_MODEL_PB = "saved_model.pb"

#: staging names: start with a dot (TF Serving only loads integer names)
STAGING_PREFIX = ".tmp-"
_DELETING_PREFIX = ".deleting-"
#: a staging leftover older than this is a crashed push, removed by :func:`prune_versions`
STALE_STAGING_S = 24 * 3600

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_VERSION_NAME = re.compile(r"[0-9]+")
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class PushResult:
    """Where a push landed: the integer version and its directory (absolute path or ``gs://`` URI)."""

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
    evaluation: dict[str, Any] | None = None,
    model_name: str = "mammo",
) -> Path:
    """Export a trained ``.keras`` model as a TF Serving SavedModel with the two signatures above.

    Args:
        keras_model_path: the training step's model; input ``(S, S, 1)`` raw 0..255 pixels, output
            softmax over ``class_names`` (in that order).
        export_dir: directory to write the SavedModel to (must not exist or be empty).
        class_names: the label of each output index.
        metadata: description stored in ``assets.extra/mammo_model.json`` (backbone, ``test_metrics``
            read by the gate, ``data`` for the model card, ...): stored as given, plus the facts of
            the exported graph.
        evaluation: the evaluation record of this model (``validation`` / ``test`` metrics), stored as
            ``assets.extra/evaluation.json`` and summarised in the model card.
        model_name: the served name written into the warmup requests.

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
        images = tf.map_fn(
            lambda data: _decode_to_patch(data, size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32),
        )
        return _outputs(images)

    def serve_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(_pixels_to_patches(pixels, size))

    archive = keras.export.ExportArchive()
    archive.track(model)
    # TF Serving calls serving_default when a request names no signature; naming it explicitly keeps
    # that independent of registration order.
    archive.add_endpoint(
        name=DEFAULT_SIGNATURE,
        fn=serve_encoded,
        input_signature=[tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)],
    )
    archive.add_endpoint(
        name=PIXELS_SIGNATURE,
        fn=serve_pixels,
        input_signature=[tf.TensorSpec([None, None, None], tf.uint8, name=PIXELS_INPUT)],
    )
    archive.write_out(str(export_dir), verbose=False)

    reference_png = reference_image_png(size)
    write_warmup_requests(export_dir / WARMUP_RELPATH, model_name, reference_png)
    # Run the warmup requests through the SavedModel just written, as TF Serving will when it loads
    # it (a failing warmup fails the load there): a broken export fails here, not in the cluster.
    reference = _run_warmup_requests(export_dir)

    description = _describe(metadata, class_names, size, reference)
    _write_json(export_dir / METADATA_RELPATH, description)
    if evaluation:
        _write_json(export_dir / EVALUATION_RELPATH, evaluation)
    (export_dir / MODEL_CARD_RELPATH).write_text(render_model_card(model_name, description, evaluation))
    logger.info("wrote serving SavedModel to %s", export_dir)
    return export_dir


def _model_input_size(model: Any, source: str | Path) -> int:
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 1:
        raise ValueError(f"{source}: expected a model input of shape (None, S, S, 1), got {shape}")
    return int(shape[1])


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


def _decode_to_patch(data: Any, size: int) -> Any:
    """One encoded image -> float32 ``[size, size, 1]`` with 8-bit values (graph code, no autograph)."""
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
    return _resize_to_patch(image[tf.newaxis], size)[0]


def _pixels_to_patches(pixels: Any, size: int) -> Any:
    """uint8 ``[n, H, W]`` -> float32 ``[n, size, size, 1]`` (channel axis added, resized if needed)."""
    import tensorflow as tf

    return _resize_to_patch(tf.cast(pixels, tf.float32)[..., tf.newaxis], size)


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


def reference_image_png(size: int) -> bytes:
    from mammo.components.imaging import encode_png

    return encode_png(reference_image(size))


def write_warmup_requests(path: Path, model_name: str, image_png: bytes) -> Path:
    """TF Serving's warmup file: a TFRecord of ``PredictionLog``s, one ``PredictRequest`` per signature.

    TF Serving replays these requests when it loads the version (before reporting it AVAILABLE), so
    the first real request does not pay for lazy initialisation.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from mammo.components.imaging import decode_png

    pixels = decode_png(image_png)[None, :, :]
    inputs = {
        DEFAULT_SIGNATURE: tf.make_tensor_proto([image_png], dtype=tf.string, shape=[1]),
        PIXELS_SIGNATURE: tf.make_tensor_proto(pixels, dtype=tf.uint8),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, tensor in inputs.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            request.inputs[SIGNATURE_INPUTS[signature]].CopyFrom(tensor)
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
        "image": "reference_image(image_size), PNG-encoded (see mammo.components.deploy.logic)",
        "probabilities": [float(p) for p in default["probabilities"][0]],
        "class_index": int(default["class_index"][0]),
    }


def _describe(
    metadata: dict[str, Any] | None, class_names: Sequence[str], size: int, reference: dict[str, Any]
) -> dict[str, Any]:
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
    }
    for key, value in facts.items():
        # the exported graph is the truth; a caller's stale value must not contradict it
        if key in description and description[key] != value:
            logger.warning("metadata %r=%r replaced by the exported model's %r", key, description[key], value)
        description[key] = value
    description.setdefault("exported_at", _utc_now())
    return description


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str, allow_nan=True))


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- model card ------------------------------------------------------------------------------

_Z95 = 1.959963984540054

INTENDED_USE = """\
Research and engineering use: classifying 8-bit grayscale **patches** (regions of interest, not
whole mammograms) of screen-film mammograms into normal tissue, benign / malignant mass and benign /
malignant calcification, as in Tiryaki (2023). It is meant for reproducing and extending that study
and for exercising the serving stack. It is **not** a medical device, has not been validated
clinically, and must not be used for diagnosis, screening or triage of real patients."""

LIMITATIONS = """\
* Trained and tested on CBIS-DDSM (digitised screen-film mammograms, 1990s scanners) and DDSM
  normals; digital mammography, other populations and other scanners are out of distribution.
* The normal class comes from different scanners (DBA 16-bit, Howtek / Lumisys 12-bit) than the
  abnormal classes: part of what separates "normal" may be the scanner signature. Check the
  per-source results of the evaluation before trusting the normal class.
* The classes were balanced for training and testing: predicted probabilities do not reflect real
  prevalence (abnormalities are rare in screening), and positive predictive values will be far
  lower in practice.
* The input must be a patch centred on the finding, mapped to 8 bits with the fixed
  `value * 255 / (2**bits - 1)` mapping (`mammo predict` does this for PNG and DICOM). Whole
  mammograms are resized to the patch size and give meaningless answers.
* CBIS-DDSM labels come from pathology of lesions that were recalled; "benign without callback"
  is counted as benign. Interval cancers and lesions missed by the original readers are absent."""


def wilson_interval(p: float, n: int, z: float = _Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials (None if undefined)."""
    if n <= 0 or p is None or not math.isfinite(p):
        return None
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float | None:
    """Hanley & McNeil (1982) standard error of a ROC AUC from ``n_pos`` positives and ``n_neg`` negatives."""
    if n_pos <= 0 or n_neg <= 0 or auc is None or not math.isfinite(auc):
        return None
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _given_interval(split: Mapping[str, Any], metric: str) -> tuple[tuple[float, float], str] | None:
    """An interval the evaluation record already holds for ``metric`` (e.g. a patient bootstrap), and its label.

    Accepted shapes: ``{"ci"|"intervals"|"confidence_intervals": {metric: [lo, hi] | {"low"/"lower",
    "high"/"upper"}, "method": ..., "level": ...}}`` or ``{f"{metric}_ci": ...}``.
    """
    candidates: list[tuple[Any, Mapping[str, Any]]] = [(split.get(f"{metric}_ci"), {})]
    for key in ("ci", "intervals", "confidence_intervals"):
        block = split.get(key)
        if isinstance(block, Mapping):
            candidates.append((block.get(metric), block))
    for value, block in candidates:
        interval = None
        if isinstance(value, (list, tuple)) and len(value) == 2 and None not in value:
            interval = float(value[0]), float(value[1])
        elif isinstance(value, Mapping):
            low = value.get("low", value.get("lower", value.get("lo")))
            high = value.get("high", value.get("upper", value.get("hi")))
            if low is not None and high is not None:
                interval = float(low), float(high)
        if interval:
            label = str(block.get("method") or "from the evaluation record")
            if block.get("level") is not None:
                label += f", level {float(block['level']):g}"
            return interval, label
    return None


def _split_intervals(split: Mapping[str, Any]) -> dict[str, tuple[tuple[float, float] | None, str]]:
    """95 % intervals of accuracy, macro AUC and macro F1: the record's own, else analytic ones."""
    out: dict[str, tuple[tuple[float, float] | None, str]] = {}
    n = int(split.get("n") or 0)
    per_class = split.get("per_class") or {}
    for metric in ("accuracy", "macro_auc", "macro_f1"):
        given = _given_interval(split, metric)
        if given:
            out[metric] = given
            continue
        value = split.get(metric)
        if metric == "accuracy":
            out[metric] = (wilson_interval(value, n), "Wilson score")
        elif metric == "macro_auc" and per_class and value is not None and math.isfinite(value):
            errors = []
            for stats in per_class.values():
                support = int(stats.get("support") or 0)
                errors.append(auc_standard_error(stats.get("auc"), support, n - support))
            if all(e is not None for e in errors):
                # mean of k one-vs-rest AUCs, their errors treated as independent (an approximation)
                se = math.sqrt(sum(e * e for e in errors)) / len(errors)
                out[metric] = ((max(0.0, value - _Z95 * se), min(1.0, value + _Z95 * se)), "Hanley-McNeil")
            else:
                out[metric] = (None, "not computed")
        else:
            out[metric] = (None, "not computed")
    return out


def _fmt(value: Any, interval: tuple[float, float] | None = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{float(value):.4f}"
    return f"{text} [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else text


def render_model_card(model_name: str, description: Mapping[str, Any], evaluation: Mapping[str, Any] | None) -> str:
    """The model card (Markdown): model, data, splits, metrics with 95 % intervals, intended use, limitations."""
    evaluation = evaluation or {}
    lines = [f"# Model card: {model_name}", ""]
    lines += ["## Model", ""]
    lines.append(f"* Backbone: {description.get('backbone', 'unknown')}")
    lines.append(f"* Input: {description.get('image_size')} x {description.get('image_size')} 8-bit grayscale patch; "
                 f"signatures `{DEFAULT_SIGNATURE}` (PNG bytes) and `{PIXELS_SIGNATURE}` (uint8 pixels)")
    lines.append(f"* Classes (output order): {', '.join(description.get('class_names', []))}")
    lines.append(f"* Exported: {description.get('exported_at', 'unknown')}")
    gate = description.get("gate")
    if isinstance(gate, Mapping):
        lines.append(f"* Promotion gate: {gate.get('reason', '')}")
    lines.append("")

    lines += ["## Data", ""]
    data = description.get("data")
    if isinstance(data, Mapping) and data:
        for key, value in data.items():
            lines.append(f"* {key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    else:
        lines.append("* CBIS-DDSM (mass and calcification case descriptions, DICOM ROI patches) and DDSM "
                     "normal mammograms (normal-tissue patches); see the pipeline run's ingest and "
                     "balance reports for the exact counts.")
    lines.append("")

    splits = [s for s in ("validation", "test") if isinstance(evaluation.get(s), Mapping)]
    lines += ["## Splits", ""]
    if splits:
        lines += ["| split | images | " + " | ".join(description.get("class_names", CLASS_NAMES)) + " |",
                  "|---|---|" + "---|" * len(description.get("class_names", CLASS_NAMES))]
        for split in splits:
            per_class = evaluation[split].get("per_class") or {}
            counts = [str(per_class.get(c, {}).get("support", "?")) for c in description.get("class_names", CLASS_NAMES)]
            lines.append(f"| {split} | {evaluation[split].get('n', '?')} | " + " | ".join(counts) + " |")
        lines.append("")
        lines.append("Train / validation: CBIS-DDSM's training split divided 80/20 by patient (stratified); "
                     "test: CBIS-DDSM's official test split plus the normals' test share.")
    else:
        lines.append("No evaluation record was stored with this version.")
    lines.append("")

    lines += ["## Metrics (with confidence intervals; 95 % unless stated)", ""]
    if splits:
        lines += ["| split | accuracy | macro AUC | macro F1 |", "|---|---|---|---|"]
        methods: list[str] = []
        for split in splits:
            m = evaluation[split]
            intervals = _split_intervals(m)
            cells = [_fmt(m.get(metric), intervals[metric][0]) for metric in ("accuracy", "macro_auc", "macro_f1")]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
            methods.append(f"{split}: " + ", ".join(f"{metric} {intervals[metric][1]}" for metric in intervals))
        lines.append("")
        test = evaluation.get("test") if "test" in splits else evaluation[splits[-1]]
        per_class = test.get("per_class") or {}
        if per_class:
            n = int(test.get("n") or 0)
            lines += [f"Per class ({'test' if 'test' in splits else splits[-1]}):", "",
                      "| class | sensitivity | specificity | F1 | AUC |", "|---|---|---|---|---|"]
            for name, s in per_class.items():
                support = int(s.get("support") or 0)
                given = ((test.get("ci") or {}).get("per_class_auc") or {}).get(name)
                se = auc_standard_error(s.get("auc"), support, n - support)
                if isinstance(given, (list, tuple)) and len(given) == 2 and None not in given:
                    auc_ci = (float(given[0]), float(given[1]))  # the evaluation record's own interval
                else:
                    auc_ci = (max(0.0, s["auc"] - _Z95 * se), min(1.0, s["auc"] + _Z95 * se)) if se is not None else None
                lines.append(f"| {name} | {_fmt(s.get('sensitivity'), wilson_interval(s.get('sensitivity'), support))} "
                             f"| {_fmt(s.get('specificity'), wilson_interval(s.get('specificity'), n - support))} "
                             f"| {_fmt(s.get('f1'))} | {_fmt(s.get('auc'), auc_ci)} |")
            lines.append("")
        lines.append("Interval methods: " + "; ".join(methods) + ". Per-class sensitivity and specificity: "
                     "Wilson score; per-class AUC: the evaluation record's intervals where it has them, else Hanley-McNeil. Macro-AUC intervals from Hanley-McNeil treat "
                     "the one-vs-rest AUCs as independent (an approximation).")
    else:
        metrics = description.get("test_metrics")
        lines.append(f"Test metrics from the deployment metadata (no intervals available): {json.dumps(metrics)}"
                     if metrics else "No metrics were stored with this version.")
    lines.append("")
    lines += ["## Intended use", "", INTENDED_USE, "", "## Limitations", "", LIMITATIONS, ""]
    return "\n".join(lines)


# -- model repositories: local folder or gs:// ------------------------------------------------


def _ordered_files(export_dir: Path) -> list[str]:
    """Relative paths of every file of a SavedModel, ``saved_model.pb`` last (it marks it complete)."""
    files = sorted(p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file())
    if SAVED_MODEL_PB not in files:
        raise FileNotFoundError(f"{export_dir} is not a SavedModel: {SAVED_MODEL_PB} is missing")
    files.remove(SAVED_MODEL_PB)
    return files + [SAVED_MODEL_PB]


class _LocalRepo:
    """``<root>/<model_name>`` on a local (or mounted) file system."""

    def __init__(self, root: str | Path, model_name: str) -> None:
        self.root = Path(root) / model_name

    def version_path(self, version: int) -> str:
        return str((self.root / str(version)).resolve())

    def versions(self) -> dict[int, bool]:
        """Integer-named sub-directories -> whether they hold ``saved_model.pb`` (all else ignored)."""
        if not self.root.is_dir():
            return {}
        return {
            int(p.name): (p / SAVED_MODEL_PB).is_file()
            for p in self.root.iterdir()
            if p.is_dir() and _VERSION_NAME.fullmatch(p.name)
        }

    def read_bytes(self, version: int, relpath: str | Path) -> bytes | None:
        path = self.root / str(version) / relpath
        return path.read_bytes() if path.is_file() else None

    def publish(self, source: Path, version: int, overrides: Mapping[str, bytes]) -> None:
        target = self.root / str(version)
        self.root.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise FileExistsError(f"{target} already exists; a served version is never overwritten")
        # The staging directory is a sibling (same file system, so the final rename is atomic) whose
        # name starts with a dot: TF Serving only loads integer names and the version scan skips it,
        # so a crashed push leaves nothing that gets served or counted.
        staging = self.root / f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            _copy_saved_model(source, staging, overrides)
            if target.exists():  # someone else published this version while we were copying
                raise FileExistsError(f"{target} appeared during the push; a served version is never overwritten")
            # os.rename fails on a non-empty existing target (and a racing empty one holds no model),
            # so this can never replace a loaded version.
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def delete_version(self, version: int) -> None:
        # Hide it first with one rename, so TF Serving never sees a half-deleted version.
        doomed = self.root / f"{_DELETING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        os.rename(self.root / str(version), doomed)
        shutil.rmtree(doomed)

    def download_version(self, version: int, dest: Path) -> Path:
        return self.root / str(version)  # already local: no copy needed

    def remove_stale_staging(self, older_than_s: float) -> list[str]:
        if not self.root.is_dir():
            return []
        now, removed = time.time(), []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith((STAGING_PREFIX, _DELETING_PREFIX)) and now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed


def _copy_saved_model(src: Path, dst: Path, overrides: Mapping[str, bytes] | None = None) -> None:
    """Copy a SavedModel with ``saved_model.pb`` last; ``overrides`` (relpath -> bytes) replace or add files."""
    overrides = overrides or {}
    for rel in _publish_order(src, overrides):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel in overrides:
            target.write_bytes(overrides[rel])
        else:
            shutil.copy2(src / rel, target)


def _publish_order(src: Path, overrides: Mapping[str, bytes]) -> list[str]:
    """The export's files plus added ``overrides``, ``saved_model.pb`` last."""
    files = _ordered_files(src)[:-1]
    return files + sorted(rel for rel in overrides if rel not in files and rel != SAVED_MODEL_PB) + [SAVED_MODEL_PB]


class _GcsRepo:
    """``gs://bucket/prefix/<model_name>`` through google-cloud-storage.

    GCS has no directories and no rename: a "version directory" is the object-name prefix
    ``<model>/<version>/``. Publishing uploads to a dot-named staging prefix, then copies server-side
    into the version prefix with ``saved_model.pb`` last, each copy conditional on the destination
    not existing (``if_generation_match=0``), then deletes the staging objects.
    """

    def __init__(self, uri: str, model_name: str, client: Any = None) -> None:
        from mammo.components import storage

        bucket, prefix = storage.split_gcs(uri)
        prefix = prefix.strip("/")
        self.prefix = (prefix + "/" if prefix else "") + model_name + "/"
        self.retry = storage.RETRY
        self.client = client or storage.client()
        self.bucket = self.client.bucket(bucket)

    def version_path(self, version: int) -> str:
        return f"gs://{self.bucket.name}/{self.prefix}{version}"

    def _blobs(self, prefix: str) -> list[Any]:
        return list(self.client.list_blobs(self.bucket, prefix=prefix, retry=self.retry))

    def versions(self) -> dict[int, bool]:
        # one delimiter listing: the "sub-directories" directly under the model prefix
        iterator = self.client.list_blobs(self.bucket, prefix=self.prefix, delimiter="/", retry=self.retry)
        for _ in iterator:  # the child "directories" arrive with the pages
            pass
        found = {}
        for child in iterator.prefixes:
            name = child[len(self.prefix):].rstrip("/")
            if _VERSION_NAME.fullmatch(name):
                found[int(name)] = self.bucket.blob(f"{child}{SAVED_MODEL_PB}").exists(retry=self.retry)
        return found

    def read_bytes(self, version: int, relpath: str | Path) -> bytes | None:
        blob = self.bucket.blob(f"{self.prefix}{version}/{Path(relpath).as_posix()}")
        return blob.download_as_bytes(retry=self.retry) if blob.exists(retry=self.retry) else None

    def publish(self, source: Path, version: int, overrides: Mapping[str, bytes]) -> None:
        target = f"{self.prefix}{version}/"
        if self._blobs(target):
            raise FileExistsError(f"gs://{self.bucket.name}/{target} already exists; a version is never overwritten")
        staging = f"{self.prefix}{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}/"
        files = _publish_order(source, overrides)
        copied: list[Any] = []
        try:
            for rel in files:  # the slow part: nothing under an integer name yet
                blob = self.bucket.blob(staging + rel)
                if rel in overrides:
                    blob.upload_from_string(overrides[rel], retry=self.retry)
                else:
                    blob.upload_from_filename(str(source / rel), retry=self.retry)
            if self._blobs(target):
                raise FileExistsError(f"gs://{self.bucket.name}/{target} appeared during the push; never overwritten")
            for rel in files:  # saved_model.pb last: the version becomes loadable with the last copy
                copied.append(
                    self.bucket.copy_blob(self.bucket.blob(staging + rel), self.bucket, target + rel,
                                          if_generation_match=0, retry=self.retry)
                )
        except BaseException as err:
            # our partial copies hold no saved_model.pb (not loadable), but remove them anyway; a
            # precondition failure means another writer owns the prefix, so touch nothing of it then
            if not _is_precondition_failure(err):
                for blob in copied:
                    _delete_quietly(blob)
            raise
        finally:
            for blob in self._blobs(staging):
                _delete_quietly(blob)

    def delete_version(self, version: int) -> None:
        blobs = self._blobs(f"{self.prefix}{version}/")
        # saved_model.pb first: from then on the remains are not a loadable version
        blobs.sort(key=lambda b: not b.name.endswith("/" + SAVED_MODEL_PB))
        for blob in blobs:
            blob.delete(retry=self.retry)

    def download_version(self, version: int, dest: Path) -> Path:
        prefix = f"{self.prefix}{version}/"
        for blob in self._blobs(prefix):
            local = dest / blob.name[len(prefix):]
            local.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(local), retry=self.retry)
        return dest

    def remove_stale_staging(self, older_than_s: float) -> list[str]:
        import datetime as dt

        now, removed = dt.datetime.now(dt.timezone.utc), set()
        for blob in self._blobs(self.prefix + STAGING_PREFIX):
            updated = blob.updated or now
            if (now - updated).total_seconds() > older_than_s:
                _delete_quietly(blob)
                removed.add(blob.name[len(self.prefix):].split("/", 1)[0])
        return sorted(removed)


def _is_precondition_failure(err: BaseException) -> bool:
    return type(err).__name__ == "PreconditionFailed" or getattr(err, "code", None) == 412


def _delete_quietly(blob: Any) -> None:
    try:
        blob.delete()
    except Exception as err:  # best effort: a leftover staging object is ignored by TF Serving
        logger.warning("could not delete %s: %s", getattr(blob, "name", blob), err)


def _repo(serving_root: str | Path, model_name: str) -> _LocalRepo | _GcsRepo:
    root = str(serving_root)
    if root.startswith("gs://"):  # mammo.components.storage and google-cloud-storage are imported only then
        return _GcsRepo(root, model_name)
    if _URI_SCHEME.match(root):
        raise ValueError(f"serving root {root}: only local paths and gs:// URIs are supported")
    return _LocalRepo(root, model_name)


# -- versions --------------------------------------------------------------------------------


def list_versions(serving_root: str | Path, model_name: str) -> dict[int, bool]:
    """Every integer version under ``<serving_root>/<model_name>`` -> whether it is complete (loadable)."""
    return dict(sorted(_repo(serving_root, model_name).versions().items()))


def push_to_serving_root(
    export_dir: str | Path,
    serving_root: str | Path,
    model_name: str,
    version: int | None = None,
    overrides: Mapping[str, bytes] | None = None,
) -> PushResult:
    """Publish an export as ``<serving_root>/<model_name>/<version>/`` without TF Serving ever loading it half-done.

    Args:
        export_dir: a SavedModel directory (from :func:`export_serving_model`).
        serving_root: TF Serving's model base directory: a local path or ``gs://bucket/prefix``.
        model_name: the served model's name (a sub-directory of ``serving_root``).
        version: the version to create; default 1 + the highest existing integer version (1 if none).
        overrides: files (relative path -> content) written instead of / in addition to the export's.

    Raises:
        FileExistsError: the version already exists (versions are never overwritten).
        FileNotFoundError: ``export_dir`` holds no ``saved_model.pb``.
    """
    export_dir = Path(export_dir)
    if not (export_dir / SAVED_MODEL_PB).is_file():
        raise FileNotFoundError(f"{export_dir} is not a SavedModel: {SAVED_MODEL_PB} is missing")
    repo = _repo(serving_root, model_name)
    existing = repo.versions()
    if version is None:
        # above every integer name, complete or not: a number TF Serving may have tried is never reused
        version = max(existing, default=0) + 1
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    if version in existing:
        raise FileExistsError(f"{repo.version_path(version)} already exists; a served version is never overwritten")
    repo.publish(export_dir, version, dict(overrides or {}))
    path = repo.version_path(version)
    logger.info("pushed %s to %s (version %d)", export_dir, path, version)
    return PushResult(version=version, path=path)


def prune_versions(serving_root: str | Path, model_name: str, keep: int, stale_staging_s: float = STALE_STAGING_S) -> list[int]:
    """Keep the ``keep`` highest complete versions; delete older ones (``keep <= 0``: keep all).

    Also removes incomplete versions (no ``saved_model.pb``: an interrupted push) older than the
    newest complete one, and staging leftovers older than ``stale_staging_s``. Returns the deleted
    version numbers.
    """
    repo = _repo(serving_root, model_name)
    removed_staging = repo.remove_stale_staging(stale_staging_s)
    if removed_staging:
        logger.info("removed stale staging leftovers %s", removed_staging)
    if keep <= 0:
        return []
    versions = repo.versions()
    complete = sorted((v for v, ok in versions.items() if ok), reverse=True)
    if not complete:
        return []
    kept = set(complete[:keep])
    newest = complete[0]
    doomed = sorted(v for v, ok in versions.items() if v not in kept and (ok or v < newest))
    for version in doomed:
        repo.delete_version(version)
    if doomed:
        logger.info("pruned %s versions %s (keeping %s)", model_name, doomed, sorted(kept))
    return doomed


def current_champion(serving_root: str | Path, model_name: str) -> dict[str, Any] | None:
    """The description of the served version (the highest complete one), or None.

    Returns the JSON stored in the version's ``assets.extra/mammo_model.json`` (the gate reads
    ``test_metrics``) with ``version`` and ``path`` added. A version without that file (pushed by
    something else) still counts as the champion: its dict then holds only ``version`` and ``path``.
    An integer directory without ``saved_model.pb`` is not served, hence never the champion.
    """
    repo = _repo(serving_root, model_name)
    complete = [v for v, ok in repo.versions().items() if ok]
    if not complete:
        return None
    version = max(complete)
    data = repo.read_bytes(version, METADATA_RELPATH)
    description: dict[str, Any] = json.loads(data) if data else {}
    if not data:
        logger.warning("champion %s has no %s", repo.version_path(version), METADATA_RELPATH)
    description.update(version=version, path=repo.version_path(version))
    return description


# -- rollback --------------------------------------------------------------------------------


def rollback(
    serving_root: str | Path,
    model_name: str,
    to_version: int | None = None,
    wait_for_rest_url: str = "",
    wait_timeout_s: float = 300,
    poll_interval_s: float = 2.0,
    keep_versions: int = 0,
) -> PushResult:
    """Serve an earlier version again by publishing a copy of it as the new highest version.

    Args:
        to_version: the version to bring back; default the complete version just below the served one.
        wait_for_rest_url: TF Serving REST base URL: wait until the new version is AVAILABLE and
            check one prediction against the answer recorded when that model was exported.
        keep_versions: prune to this many complete versions afterwards (0: keep all).

    The copy's ``mammo_model.json`` records ``rolled_back_from`` / ``rolled_back_at`` and its model
    card starts with a rollback note; the SavedModel itself is byte-identical.

    Raises:
        ValueError: nothing to roll back to (no earlier complete version, or ``to_version`` is not a
            complete version).
    """
    repo = _repo(serving_root, model_name)
    versions = repo.versions()
    complete = sorted(v for v, ok in versions.items() if ok)
    if not complete:
        raise ValueError(f"{model_name} under {serving_root} has no complete version to roll back to")
    served = complete[-1]
    if to_version is None:
        if len(complete) < 2:
            raise ValueError(f"{model_name} under {serving_root} has only version {served}: nothing earlier to roll back to")
        to_version = complete[-2]
    if to_version not in complete:
        raise ValueError(
            f"version {to_version} of {model_name} under {serving_root} is not a complete version "
            f"(complete versions: {complete})"
        )
    if to_version == served:
        raise ValueError(f"version {to_version} is already the served version of {model_name}")

    with tempfile.TemporaryDirectory(prefix="mammo-rollback-") as tmp:
        source = repo.download_version(to_version, Path(tmp) / "version")
        description = json.loads((source / METADATA_RELPATH).read_text()) if (source / METADATA_RELPATH).is_file() else {}
        description.update(rolled_back_from=to_version, rolled_back_at=_utc_now(), replaced_version=served)
        card = (source / MODEL_CARD_RELPATH).read_text() if (source / MODEL_CARD_RELPATH).is_file() else ""
        note = (f"> **Rollback**: this version is a copy of version {to_version}, published on "
                f"{description['rolled_back_at']} to replace version {served}.\n\n")
        overrides = {
            METADATA_RELPATH.as_posix(): json.dumps(description, indent=2, sort_keys=True, default=str).encode(),
            MODEL_CARD_RELPATH.as_posix(): (note + card).encode(),
        }
        result = push_to_serving_root(source, serving_root, model_name, overrides=overrides)
    logger.info("rolled %s back to version %d as version %d (was serving %d)", model_name, to_version, result.version, served)
    if wait_for_rest_url:
        wait_until_available(wait_for_rest_url, model_name, result.version, wait_timeout_s, poll_interval_s)
        reference = description.get("reference_prediction")
        if reference and description.get("image_size"):
            check_served_prediction(wait_for_rest_url, model_name, result.version,
                                    reference_image_png(int(description["image_size"])), reference)
        else:
            logger.warning("version %d records no reference prediction: served answer not checked", to_version)
    if keep_versions:
        prune_versions(serving_root, model_name, keep_versions)
    return result


# -- wait and check --------------------------------------------------------------------------


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


def check_served_prediction(
    rest_url: str,
    model_name: str,
    version: int,
    image_png: bytes,
    expected: Mapping[str, Any],
    atol: float = 1e-3,
    timeout_s: float = 60,
) -> dict[str, Any]:
    """Send one prediction to ``version`` over REST and compare it with the local SavedModel's answer.

    The request is TF Serving's documented row format for a single ``*_bytes`` input:
    ``{"signature_name": "serving_default", "instances": [{"b64": "<PNG>"}]}`` posted to
    ``/v1/models/<name>/versions/<version>:predict``. ``atol`` absorbs CPU/GPU arithmetic differences.

    Raises:
        RuntimeError: the request failed or the served probabilities differ from ``expected``.
    """
    url = f"{rest_url.rstrip('/')}/v1/models/{model_name}/versions/{int(version)}:predict"
    body = {"signature_name": DEFAULT_SIGNATURE, "instances": [{"b64": base64.b64encode(image_png).decode("ascii")}]}
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")
        raise RuntimeError(f"post-deploy check: {url}: HTTP {err.code}: {detail[:300]}") from None
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(f"post-deploy check: {url} unreachable: {err}") from None
    try:
        (row,) = answer["predictions"]
        served = [float(p) for p in row["probabilities"]]
    except (KeyError, TypeError, ValueError) as err:
        raise RuntimeError(f"post-deploy check: unexpected answer from {url}: {str(answer)[:300]} ({err!r})") from None
    local = [float(p) for p in expected["probabilities"]]
    diff = max((abs(a - b) for a, b in zip(served, local)), default=math.inf) if len(served) == len(local) else math.inf
    if diff > atol:
        raise RuntimeError(
            f"post-deploy check: {model_name} version {version} at {rest_url} answers {served} but the local "
            f"SavedModel answers {local} (max difference {diff:.3g} > {atol:g}): the server is not serving this model"
        )
    logger.info("post-deploy check: %s version %d answers as the local SavedModel (max diff %.2g)", model_name, version, diff)
    return {"url": url, "probabilities": served, "max_abs_difference": diff}


# -- the step --------------------------------------------------------------------------------


def deploy(
    keras_model_path: str | Path,
    serving_root: str | Path,
    model_name: str,
    metadata: dict[str, Any] | None = None,
    wait_for_rest_url: str = "",
    wait_timeout_s: float = 300,
    class_names: Sequence[str] = CLASS_NAMES,
    evaluation: dict[str, Any] | None = None,
    keep_versions: int = 0,
    check_prediction: bool = True,
    poll_interval_s: float = 2.0,
) -> PushResult:
    """Export ``keras_model_path``, push it as the next version, then optionally wait, check and prune.

    With ``wait_for_rest_url``: poll until the new version is AVAILABLE (timeout -> ``TimeoutError``)
    and, if ``check_prediction``, compare one served prediction with the local SavedModel's answer
    (mismatch -> ``RuntimeError``). Pruning to ``keep_versions`` happens only after that succeeded,
    so a failed deployment never costs an older, working version.
    """
    with tempfile.TemporaryDirectory(prefix="mammo-export-") as tmp:
        export_dir = export_serving_model(keras_model_path, Path(tmp) / "export", class_names, metadata,
                                          evaluation=evaluation, model_name=model_name)
        description = json.loads((export_dir / METADATA_RELPATH).read_text())
        result = push_to_serving_root(export_dir, serving_root, model_name)
    if wait_for_rest_url:
        try:
            wait_until_available(wait_for_rest_url, model_name, result.version, wait_timeout_s, poll_interval_s)
            if check_prediction:
                check_served_prediction(wait_for_rest_url, model_name, result.version,
                                        reference_image_png(int(description["image_size"])),
                                        description["reference_prediction"])
        except (TimeoutError, RuntimeError) as err:
            hint = (f" Version {result.version} stays at {result.path}; `mammo rollback --serving-root "
                    f"{serving_root} --model-name {model_name}` serves the previous version again.")
            raise type(err)(str(err) + hint) from err
    if keep_versions:
        prune_versions(serving_root, model_name, keep_versions)
    return result
