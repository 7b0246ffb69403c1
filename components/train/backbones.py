"""Keras application backbones and the paper's per-backbone settings.

The model built here takes raw 8-bit grayscale patches (float32 0..255, ``[S, S, 1]``) and keeps
everything else inside the graph, so TF Serving gets raw pixels: resize to the backbone's input
size, gray -> RGB, the backbone's own preprocessing (or the notebooks' ``x / 255``), backbone,
head (GAP -> Dense -> Dropout -> Dense -> softmax). Only built-in layers are used, so the saved
``.keras`` file loads without custom objects.

``weights``: ``"imagenet"`` makes Keras download the ImageNet weights on first use (the real path
on a cluster; impossible on an offline machine), ``"none"`` starts from random weights, any other
value is a path to a weights file for the backbone (``by_name`` is not used: it must match).
"""

from __future__ import annotations

from dataclasses import dataclass

from mammo.components.config import CLASS_NAMES, TrainConfig


@dataclass(frozen=True)
class Backbone:
    name: str
    keras_name: str           # attribute of keras.applications
    input_size: int           # the paper notebooks' input size
    batch_size: int           # the paper notebooks' batch size
    frozen_in_stage2: int     # layers of the *model* kept frozen in stage 2 (paper); 0 = use the fraction
    preprocessing: str        # caffe | tf | torch | none (inside the model: EfficientNet, MobileNetV3)
    head_units2: int = 512


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone("resnet50", "ResNet50", 224, 8, 120, "caffe"),
        Backbone("xception", "Xception", 224, 8, 90, "tf"),
        Backbone("nasnetmobile", "NASNetMobile", 224, 6, 520, "tf"),
        Backbone("nasnetlarge", "NASNetLarge", 331, 6, 700, "tf", head_units2=128),
        Backbone("efficientnetb7", "EfficientNetB7", 331, 2, 545, "none"),
        # not in the paper: a small, fast backbone for the demo profile and CI
        Backbone("mobilenetv3small", "MobileNetV3Small", 224, 32, 0, "none"),
    ]
}

#: caffe-style means (BGR order in Keras; the gray patch is replicated so the order is moot)
CAFFE_MEAN = (103.939, 116.779, 123.68)


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}") from None


def preprocessing_layer(kind: str):
    """Keras layer mapping 0..255 RGB to what the backbone expects."""
    import keras

    if kind == "caffe":
        return keras.layers.Normalization(mean=list(CAFFE_MEAN), variance=[1.0, 1.0, 1.0], name="caffe_preprocess")
    if kind == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="tf_preprocess")
    if kind == "rescale":
        return keras.layers.Rescaling(1.0 / 255.0, name="rescale_preprocess")
    if kind == "none":
        return keras.layers.Identity(name="no_preprocess")
    raise ValueError(f"unknown preprocessing {kind!r}")


def build_model(backbone: Backbone, image_size: int, cfg: TrainConfig):
    """(model, base): the full classifier and its backbone sub-model (for freezing)."""
    import keras

    input_size = cfg.input_size or backbone.input_size
    weights = None if cfg.weights.lower() in ("", "none") else cfg.weights
    app = getattr(keras.applications, backbone.keras_name)
    kwargs = {"include_top": False, "weights": weights, "input_shape": (input_size, input_size, 3)}
    if backbone.keras_name.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = True  # like EfficientNet, it then expects 0..255 inputs
    base = app(**kwargs)
    if cfg.bn_momentum:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = cfg.bn_momentum
    preprocessing = backbone.preprocessing if cfg.preprocessing == "backbone" else "rescale"
    if cfg.preprocessing == "rescale" and backbone.keras_name.startswith(("EfficientNet", "MobileNetV3")):
        preprocessing = "none"  # their own rescaling layer already maps 0..255; x/255 twice would be wrong

    inputs = keras.Input((image_size, image_size, 1), name="images")
    x = inputs
    if input_size != image_size:
        x = keras.layers.Resizing(input_size, input_size, interpolation="bilinear", name="resize")(x)
    x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = preprocessing_layer(preprocessing)(x)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(cfg.head_units, activation="relu", name="fc1")(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    x = keras.layers.Dense(cfg.head_units2 or backbone.head_units2, activation="relu", name="fc2")(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=f"mammo_{backbone.name}")
    return model, base, preprocessing
