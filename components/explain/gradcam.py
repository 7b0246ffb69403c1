"""Grad-CAM saliency of single patches (Selvaraju et al. 2017): where in a patch the model looks.

For a class c, the feature maps ``A_k`` of the last spatial layer are weighted by the mean gradient
of the class's pre-softmax score over each map, summed and rectified: ``relu(sum_k w_k A_k)`` with
``w_k = mean_ij d y_c / d A_k[i, j]``. The map has the feature grid's resolution; it is resized to
the patch and scaled to [0, 1] (all zero when nothing speaks for the class).

The "last spatial layer" is the last layer of the model's top level whose output has a height and
a width: the convolutional backbone as a whole in the training step's classifier (a nested model),
the last convolution in a plain sequential model. Patches run through the top-level layers one by
one, which works for models whose top level is a chain (each layer fed by the one before it,
possibly several times, as ``gray_to_rgb`` is): every model the training step builds.

Overlays are drawn with :mod:`mammo.components.explain.overlay`, shared with the heatmap tool.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mammo.components.config import CLASS_ABBREVIATIONS, CLASS_NAMES


def _chain(model: Any) -> list[tuple[Any, int]]:
    """The top-level layers after the input as ``(layer, how many inputs)``; ValueError if not a chain."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    chain, previous = [], None
    for layer in layers:
        if not layer._inbound_nodes:
            raise ValueError(f"layer {layer.name!r} is not connected: not a chain")
        # the first node is the layer's place in the model's graph (Sequential may add more when rebuilt)
        sources = {t._keras_history.operation.name for t in layer._inbound_nodes[0].arguments.keras_tensors}
        expected = previous.name if previous is not None else None
        if len(sources) != 1 or (expected is not None and sources != {expected}):
            raise ValueError(f"layer {layer.name!r} takes {sorted(sources)}: the model's top level is not a chain")
        args = layer._inbound_nodes[0].arguments.args
        chain.append((layer, len(args[0]) if args and isinstance(args[0], (list, tuple)) else 0))
        previous = layer
    return chain


def target_layer(model: Any) -> Any:
    """The layer whose feature maps Grad-CAM weighs (the last top-level layer with a spatial output)."""
    return _chain(model)[_target_index(model)][0]


def _target_index(model: Any) -> int:
    """Index in :func:`_chain` of the last layer with a spatial (4-D) output."""
    chain = _chain(model)
    spatial = [i for i, (layer, _) in enumerate(chain) if len(layer.output.shape) == 4]
    if not spatial:
        raise ValueError(f"model {model.name!r} has no layer with a spatial output for Grad-CAM")
    return spatial[-1]


def _call(layer: Any, x: Any, n_inputs: int) -> Any:
    return layer([x] * n_inputs if n_inputs else x, training=False)


def gradcam(model: Any, images: np.ndarray, class_index: Sequence[int] | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(saliency maps ``[n, H, W]`` in [0, 1], probabilities ``[n, classes]``) of a batch of patches.

    ``images``: ``[n, H, W, 1]`` (or ``[n, H, W]``) in the model's input range (0..255);
    ``class_index``: one class per image or one for all; default each image's predicted class.
    """
    import keras
    import tensorflow as tf

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    chain = _chain(model)
    target = _target_index(model)
    last, _ = chain[-1]
    softmax_head = isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == "softmax"
    with tf.GradientTape() as tape:
        h = tf.convert_to_tensor(x)
        for layer, n_inputs in chain[: target + 1]:
            h = _call(layer, h, n_inputs)
        features = h
        tape.watch(features)
        for layer, n_inputs in chain[target + 1 : -1]:
            h = _call(layer, h, n_inputs)
        if softmax_head:  # Grad-CAM uses the score before the softmax
            scores = tf.matmul(tf.cast(h, last.kernel.dtype), last.kernel) + last.bias
            probs = tf.nn.softmax(scores)
        else:
            probs = _call(last, h, chain[-1][1])
            scores = tf.math.log(tf.clip_by_value(tf.cast(probs, tf.float32), 1e-12, 1.0))
        probs_np = np.asarray(probs, dtype=float)
        if class_index is None:
            cls = probs_np.argmax(axis=1)
        else:
            cls = np.broadcast_to(np.asarray(class_index, dtype=int), (len(x),))
        chosen = tf.gather(tf.cast(scores, tf.float32), tf.constant(cls), axis=1, batch_dims=1)
    grads = tape.gradient(chosen, features)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1))[..., tf.newaxis]
    cam = tf.image.resize(cam, x.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    cam = np.where(peak[:, None, None] > 0, cam / np.maximum(peak, 1e-12)[:, None, None], 0.0)
    return cam.astype(np.float32), probs_np


def overlay(patch: np.ndarray, saliency: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A patch (uint8 ``[H, W(, 1)]``) with its saliency map blended in colour (RGB uint8)."""
    from mammo.components.explain.overlay import blend

    gray = np.asarray(patch, dtype=np.uint8)
    return blend(gray[..., 0] if gray.ndim == 3 else gray, saliency, alpha=alpha, threshold=0.05)


def pick_examples(y_true: np.ndarray, probs: np.ndarray, per_class: int, seed: int = 0) -> list[int]:
    """Indices of up to ``per_class`` correctly and ``per_class`` wrongly classified patches per class."""
    rng = np.random.default_rng(seed)
    pred = np.asarray(probs).argmax(axis=1)
    chosen: list[int] = []
    for i in range(len(CLASS_NAMES)):
        for correct in (True, False):
            pool = np.flatnonzero((y_true == i) & ((pred == i) == correct))
            if len(pool):
                chosen += sorted(rng.choice(pool, size=min(per_class, len(pool)), replace=False).tolist())
    return chosen


def gradcam_gallery(model: Any, images: np.ndarray, y_true: np.ndarray, probs: np.ndarray,
                    patch_ids: Sequence[str], per_class: int, seed: int = 0) -> list[dict]:
    """Grad-CAM overlays (of the predicted class) of a sample of test patches, for the report.

    ``probs`` are the evaluation's predictions of ``images`` (they pick the patches and the class).

    One dict per patch: ``patch_id``, ``true``, ``predicted`` (class names), ``correct``,
    ``probability`` (of the predicted class) and ``png`` (the overlay as PNG bytes).
    """
    from mammo.components.explain.overlay import to_png_bytes

    if per_class <= 0:
        return []
    y_true = np.asarray(y_true, dtype=int)
    index = pick_examples(y_true, probs, per_class, seed)
    if not index:
        return []
    predicted = np.asarray(probs)[index].argmax(axis=1)
    maps, _ = gradcam(model, np.asarray(images)[index], class_index=predicted)
    out = []
    for k, i in enumerate(index):
        pred = int(predicted[k])
        out.append({"patch_id": str(patch_ids[i]), "true": CLASS_NAMES[y_true[i]], "predicted": CLASS_NAMES[pred],
                    "true_abbreviation": CLASS_ABBREVIATIONS[CLASS_NAMES[y_true[i]]],
                    "predicted_abbreviation": CLASS_ABBREVIATIONS[CLASS_NAMES[pred]],
                    "correct": bool(pred == y_true[i]), "probability": float(probs[i][pred]),
                    "png": to_png_bytes(overlay(np.asarray(images)[i], maps[k]))})
    return out
