"""The backbone registry, weights resolution and the exported classifier.

The model built here takes raw 8-bit grayscale patches (float32 0..255, ``[S, S, 1]``) and keeps
everything else inside the graph, so TF Serving gets raw pixels: resize to the backbone's input
size, gray -> RGB, the backbone's own preprocessing (or the notebooks' ``x / 255``), backbone,
head (GAP -> Dense -> Dropout -> Dense -> softmax in float32). Only built-in layers are used, so
the saved ``.keras`` file loads with plain ``keras.models.load_model`` (no custom objects).
Augmentation is not part of this model: it runs on the accelerator in the training wrapper
(:mod:`mammo.components.train.inputs`), so the exported model is exactly the classifier.

Backbones (``train.backbones``): a registry name (:data:`BACKBONES`), or any
``keras.applications`` model as ``keras:<Application>`` (e.g. ``keras:MobileNet``,
``keras:DenseNet121``) with keyword arguments from ``train.backbone_kwargs``: entries
``<Application>.<argument>=<value>`` for one application or ``<argument>=<value>`` for every
``keras:`` backbone (values are Python literals: ``0.25``, ``True``, ``'text'``; other text is a
string). Such a backbone takes its preprocessing from its Keras module (:data:`MODULE_PREPROCESSING`),
input side 224 (or ``train.input_size``) and unfreezes the last ``train.stage2_unfreeze_fraction``
of its layers in stage 2. The arguments the registry sets itself (:data:`RESERVED_KWARGS`) are refused.

``weights`` (``train.weights``):

* ``"imagenet"``: Keras' ImageNet weights, downloaded once into ``train.weights_cache_dir``
  (``<dir>/models/<file>``; default Keras' own ``~/.keras``). Without network access the
  download fails with :class:`WeightsUnavailableError`, which names the URL and the file to put
  in the cache (or to pass as ``train.weights``);
* ``"none"``: random initialisation (the demo and the tests);
* a local path or ``gs://bucket/path`` to a weights file of the backbone (``.h5`` or
  ``.weights.h5``, saved from the same architecture without its top); GCS files are copied into
  ``<weights_cache_dir>/gcs/`` first.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammo.components.config import CLASS_NAMES, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """One registry entry: how to build a backbone and the paper's settings for it."""

    #: the name used in the pipeline parameters (``train.backbones``)
    name: str
    #: attribute of ``keras.applications`` ("" for the in-house test network)
    keras_name: str
    #: default model input side (the paper notebooks' for the paper's backbones)
    input_size: int
    #: smallest input side the architecture accepts (Keras' ``min_size``)
    min_input_size: int
    #: default batch size per accelerator (the paper notebooks')
    batch_size: int
    #: layers of the backbone kept frozen in stage 2 (the paper's counts); 0 = use
    #: ``frozen_fraction_in_stage2``
    frozen_in_stage2: int
    #: caffe | tf | torch | none (none: the Keras model rescales 0..255 itself)
    preprocessing: str
    head_units2: int = 512
    #: one of the five backbones of Tiryaki (2023)
    paper: bool = False
    #: extra keyword arguments of the Keras application
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: the Keras model applies its own 0..255 -> input scaling, so ``preprocessing=rescale`` must
    #: not divide again (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3)
    rescales_itself: bool = False
    #: share of the backbone's layers kept frozen in stage 2 when there is no paper count;
    #: 0 = ``1 - train.stage2_unfreeze_fraction``
    frozen_fraction_in_stage2: float = 0.0

    @property
    def slug(self) -> str:
        """The name as a Keras model name (``keras:MobileNet`` -> ``keras_MobileNet``)."""
        return re.sub(r"\W", "_", self.name)


#: the paper's five backbones keep about two thirds of their layers frozen in stage 2 (ResNet50 120
#: of 175, Xception 90 of 132, NASNetMobile 520 of 769): the same share for a new backbone
PAPER_FROZEN_FRACTION = 0.68


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        # the paper's five (input size, batch size and stage-2 freeze counts from its notebooks)
        Backbone("resnet50", "ResNet50", 224, 32, 8, 120, "caffe", paper=True),
        Backbone("xception", "Xception", 224, 71, 8, 90, "tf", paper=True),
        Backbone("nasnetmobile", "NASNetMobile", 224, 32, 6, 520, "tf", paper=True),
        Backbone("nasnetlarge", "NASNetLarge", 331, 32, 6, 700, "tf", head_units2=128, paper=True),
        Backbone("efficientnetb7", "EfficientNetB7", 331, 32, 2, 545, "none", paper=True, rescales_itself=True),
        # modern options (not in the paper): stage 2 unfreezes the last stage2_unfreeze_fraction
        Backbone("efficientnetv2s", "EfficientNetV2S", 331, 32, 8, 0, "none",
                 kwargs={"include_preprocessing": True}, rescales_itself=True),
        Backbone("convnexttiny", "ConvNeXtTiny", 224, 32, 16, 0, "none",
                 kwargs={"include_preprocessing": True}, rescales_itself=True),
        # small and fast: the demo profile and CI
        Backbone("mobilenetv3small", "MobileNetV3Small", 224, 32, 32, 0, "none",
                 kwargs={"include_preprocessing": True}, rescales_itself=True),
        # MobileNet v1 with alpha 0.25 (218k parameters): real ImageNet transfer learning in CI, the
        # paper's stage-2 share frozen; its ImageNet file is mobilenet_2_5_224_tf_no_top.h5
        Backbone("mobilenet025", "MobileNet", 224, 32, 32, 0, "tf", kwargs={"alpha": 0.25},
                 frozen_fraction_in_stage2=PAPER_FROZEN_FRACTION),
        # a 4-block CNN (no ImageNet weights) for smoke tests of the schedule: seconds per epoch on a CPU
        Backbone("tinycnn", "", 32, 16, 8, 0, "tf"),
    ]
}

#: caffe-style means (BGR order in Keras; the gray patch is replicated so the order is moot)
CAFFE_MEAN = (103.939, 116.779, 123.68)
#: torch-style ImageNet statistics on 0..1 inputs
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pre-trained weights could not be obtained (no network, missing file)."""


KERAS_PREFIX = "keras:"
#: arguments of a Keras application that the registry sets (or that would break the classifier)
RESERVED_KWARGS = frozenset({"include_top", "weights", "input_shape", "input_tensor", "classes",
                             "classifier_activation", "pooling"})
#: preprocessing of each ``keras.applications`` module (its ``preprocess_input`` mode); "none":
#: the model rescales 0..255 itself (``include_preprocessing``, on by default in those modules)
MODULE_PREPROCESSING = {
    "convnext": "none", "densenet": "torch", "efficientnet": "none", "efficientnet_v2": "none",
    "inception_resnet_v2": "tf", "inception_v3": "tf", "mobilenet": "tf", "mobilenet_v2": "tf",
    "mobilenet_v3": "none", "nasnet": "tf", "resnet": "caffe", "resnet_v2": "tf", "vgg16": "caffe",
    "vgg19": "caffe", "xception": "tf",
}
#: what those modules expect when ``include_preprocessing=False`` is passed
_WITHOUT_OWN_PREPROCESSING = {"convnext": "torch", "efficientnet_v2": "tf", "mobilenet_v3": "tf"}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_KWARG = re.compile(rf"^(?:(?P<app>{_IDENT})\.)?(?P<key>{_IDENT})=(?P<value>.*)$")


def check_backbone_names(names: list[str]) -> None:
    """Each ``train.backbones`` entry is a registry name or ``keras:<Application>`` (syntax only)."""
    for name in names:
        if name in BACKBONES:
            continue
        if name.startswith(KERAS_PREFIX) and re.fullmatch(_IDENT, name[len(KERAS_PREFIX):]):
            continue
        raise ValueError(f"train.backbones entry {name!r} is neither a registry name ({sorted(BACKBONES)}) nor "
                         "keras:<Application> with a keras.applications model name (e.g. keras:MobileNet)")


def parse_backbone_kwargs(entries: list[str], backbones: list[str]) -> dict[str | None, dict[str, Any]]:
    """``train.backbone_kwargs`` as ``{application or None (every keras: backbone): {argument: value}}``.

    Raises a ValueError naming the key and the allowed form for a malformed or reserved entry, or
    one that no ``keras:`` backbone in ``backbones`` would receive.
    """
    apps = {b[len(KERAS_PREFIX):] for b in backbones if b.startswith(KERAS_PREFIX)}
    out: dict[str | None, dict[str, Any]] = {}
    for entry in entries:
        match = _KWARG.match(str(entry).strip())
        form = ("train.backbone_kwargs entries are <argument>=<value> (every keras: backbone) or "
                "<Application>.<argument>=<value> (e.g. MobileNet.alpha=0.5)")
        if not match or not match["value"].strip():
            raise ValueError(f"train.backbone_kwargs entry {entry!r} is malformed: {form}")
        app, key = match["app"], match["key"]
        if key in RESERVED_KWARGS:
            raise ValueError(f"train.backbone_kwargs entry {entry!r}: {key} is set by the registry "
                             f"(reserved: {sorted(RESERVED_KWARGS)}); use train.weights / train.input_size")
        if (app and app not in apps) or not apps:
            raise ValueError(f"train.backbone_kwargs entry {entry!r} applies to no backbone: it needs "
                             f"{'keras:' + app if app else 'a keras:<Application> entry'} in train.backbones "
                             f"(now {backbones})")
        out.setdefault(app, {})[key] = _literal(match["value"].strip())
    return out


def _literal(text: str) -> Any:
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def get_backbone(name: str, cfg: TrainConfig | None = None) -> Backbone:
    """The registry entry ``name``, or a :class:`Backbone` for ``keras:<Application>`` with ``cfg``'s arguments."""
    if name in BACKBONES:
        return BACKBONES[name]
    if not name.startswith(KERAS_PREFIX):
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)} or "
                         "keras:<Application> (any keras.applications model, e.g. keras:MobileNet)")
    import keras

    app_name = name[len(KERAS_PREFIX):]
    app = getattr(keras.applications, app_name, None)
    if not app_name[:1].isupper() or not callable(app):
        available = sorted(n for n in dir(keras.applications) if n[:1].isupper())
        raise ValueError(f"unknown backbone {name!r}: keras.applications has no model {app_name!r}; "
                         f"available: {available}")
    by_app = parse_backbone_kwargs(cfg.backbone_kwargs, [*cfg.backbones, name]) if cfg is not None else {}
    kwargs = {**by_app.get(None, {}), **by_app.get(app_name, {})}
    module = app.__module__.rsplit(".", 1)[-1]
    if module not in MODULE_PREPROCESSING:
        raise ValueError(f"backbone {name!r}: no known preprocessing for keras.applications module {module!r}; "
                         f"known: {sorted(MODULE_PREPROCESSING)}")
    preprocessing = MODULE_PREPROCESSING[module]
    if preprocessing == "none" and kwargs.get("include_preprocessing") is False:
        preprocessing = _WITHOUT_OWN_PREPROCESSING.get(module, "tf")
        if module == "efficientnet_v2" and re.fullmatch(r"EfficientNetV2B\d", app_name):
            preprocessing = "torch"  # the B variants were trained with V1's (torch-style) statistics
    return Backbone(name, app_name, 224, 32, 32, 0, preprocessing, kwargs=kwargs,
                    rescales_itself=preprocessing == "none")


def input_size_of(backbone: Backbone, cfg: TrainConfig) -> int:
    """The model input side for ``backbone`` under ``cfg`` (checked against the architecture's minimum)."""
    size = cfg.input_size or backbone.input_size
    if size < backbone.min_input_size:
        raise ValueError(f"train.input_size={size} is below the minimum input size {backbone.min_input_size} "
                         f"of {backbone.name}")
    return size


def resolved_preprocessing(backbone: Backbone, cfg: TrainConfig) -> str:
    """The preprocessing actually applied: the backbone's own, or ``rescale`` (x / 255)."""
    if cfg.preprocessing not in ("backbone", "rescale"):
        raise ValueError(f"train.preprocessing must be 'backbone' or 'rescale', got {cfg.preprocessing!r}")
    if cfg.preprocessing == "backbone":
        return backbone.preprocessing
    # these models rescale 0..255 themselves; x / 255 in front would scale twice
    return "none" if backbone.rescales_itself else "rescale"


def preprocessing_layer(kind: str):
    """Keras layer mapping 0..255 RGB to what the backbone expects."""
    import keras

    if kind == "caffe":
        return keras.layers.Normalization(mean=list(CAFFE_MEAN), variance=[1.0, 1.0, 1.0], name="caffe_preprocess")
    if kind == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="tf_preprocess")
    if kind == "torch":
        return keras.layers.Normalization(mean=[255.0 * m for m in TORCH_MEAN],
                                          variance=[(255.0 * s) ** 2 for s in TORCH_STD], name="torch_preprocess")
    if kind == "rescale":
        return keras.layers.Rescaling(1.0 / 255.0, name="rescale_preprocess")
    if kind == "none":
        return keras.layers.Identity(name="no_preprocess")
    raise ValueError(f"unknown preprocessing {kind!r}")


# -- weights -------------------------------------------------------------------------------------


def weights_cache_dir(cfg: TrainConfig) -> Path | None:
    return Path(cfg.weights_cache_dir).expanduser() if cfg.weights_cache_dir else None


def resolve_weights(spec: str, cache_dir: Path | None = None) -> str | None:
    """``train.weights`` -> what ``keras.applications`` takes: None, ``"imagenet"`` or a local file path.

    A ``gs://`` file is downloaded into ``<cache_dir>/gcs/<bucket>/<object>`` (re-used when it is
    already there with the same size).
    """
    text = (spec or "").strip()
    if text.lower() in ("", "none", "random"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    from mammo.components import storage

    if storage.is_gcs(text):
        bucket, name = storage.split_gcs(text)
        root = cache_dir or Path(tempfile.gettempdir()) / "mammo-weights"
        local = root / "gcs" / bucket / name
        try:
            if not (local.exists() and local.stat().st_size == storage.size(text)):
                storage.download_file(text, local)
                log.info("downloaded weights %s -> %s (%.1f MB)", text, local, local.stat().st_size / 1e6)
        except (storage.StorageError, OSError) as exc:
            raise WeightsUnavailableError(f"cannot read the weights file {text}: {exc}") from exc
        return str(local)
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"train.weights={text!r}: no such file (use 'imagenet', 'none', a local "
                                      "weights file or gs://bucket/path/to/weights.h5)")
    return str(path)


@contextlib.contextmanager
def _keras_cache(cache_dir: Path | None) -> Iterator[None]:
    """Make Keras' downloads (``keras.utils.get_file`` without ``cache_dir``) use ``cache_dir``.

    The applications call ``get_file(..., cache_subdir="models")`` relative to Keras' home
    (``KERAS_HOME``, read once at import); the home is switched for the duration of the build.
    """
    if cache_dir is None:
        yield
        return
    from keras.src.backend import config as keras_config

    cache_dir.mkdir(parents=True, exist_ok=True)
    previous = getattr(keras_config, "_KERAS_DIR", None)
    keras_config._KERAS_DIR = str(cache_dir)
    try:
        yield
    finally:
        keras_config._KERAS_DIR = previous


_URL = re.compile(r"(https?://\S+?)(?::\s|\s|$)")


def _offline_message(backbone: Backbone, exc: BaseException, cache_dir: Path | None) -> str:
    match = _URL.search(str(exc))
    url = match.group(1) if match else "(see the error below)"
    fname = url.rsplit("/", 1)[-1] if match else "<file>"
    cache = cache_dir or Path("~/.keras")
    return (f"cannot download the ImageNet weights of {backbone.name} ({backbone.keras_name}): {exc}\n"
            f"This machine cannot reach {url}. Either download that file elsewhere and copy it to "
            f"{cache}/models/{fname} (train.weights_cache_dir sets the folder; Keras then finds it without "
            f"network), or pass a weights file with train.weights=/path/to/{fname} or "
            f"train.weights=gs://bucket/path/{fname}, or train from scratch with train.weights=none.")


def build_base(backbone: Backbone, input_size: int, weights: str | None, cache_dir: Path | None = None):
    """The backbone without its top, for ``(input_size, input_size, 3)`` inputs."""
    import keras

    if backbone.name == "tinycnn":
        base = _tiny_cnn(input_size)
        if weights == "imagenet":
            raise WeightsUnavailableError("tinycnn has no ImageNet weights: use train.weights=none or a weights file")
        if weights:
            base.load_weights(weights)
        return base
    app: Callable = getattr(keras.applications, backbone.keras_name)
    kwargs = {"include_top": False, "weights": weights, "input_shape": (input_size, input_size, 3), **backbone.kwargs}
    try:
        with _keras_cache(cache_dir):
            return app(**kwargs)
    except Exception as exc:
        if weights == "imagenet" and "URL fetch failure" in str(exc):
            raise WeightsUnavailableError(_offline_message(backbone, exc, cache_dir)) from exc
        if weights not in (None, "imagenet") and isinstance(exc, (ValueError, OSError)):
            raise WeightsUnavailableError(f"the weights file {weights} does not fit {backbone.keras_name} "
                                          f"without top at {input_size} px: {exc}") from exc
        raise


def _tiny_cnn(input_size: int):
    """Four conv-BN-ReLU blocks (16..64 filters): a real, fast backbone with BatchNormalization."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="tiny_input")
    x = inputs
    for i, filters in enumerate((16, 32, 48, 64)):
        x = keras.layers.Conv2D(filters, 3, strides=2 if i else 1, padding="same", use_bias=False,
                                name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    return keras.Model(inputs, x, name="tinycnn")


# -- the classifier ------------------------------------------------------------------------------


def build_model(backbone: Backbone, image_size: int, cfg: TrainConfig, weights: str | None = "config"):
    """(model, base, preprocessing): the full classifier, its backbone (for freezing) and the
    preprocessing used.

    ``weights`` overrides ``cfg.weights`` with an already resolved value (None, "imagenet" or a
    local path); by default ``cfg.weights`` is resolved here (gs:// files are downloaded).
    The dtype policy in force (``mixed_float16`` on GPUs) applies to every layer except the
    softmax, which stays float32.
    """
    import keras

    input_size = input_size_of(backbone, cfg)
    if weights == "config":
        weights = resolve_weights(cfg.weights, weights_cache_dir(cfg))
    base = build_base(backbone, input_size, weights, weights_cache_dir(cfg))
    if cfg.bn_momentum:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = cfg.bn_momentum
    preprocessing = resolved_preprocessing(backbone, cfg)

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
    model = keras.Model(inputs, outputs, name=f"mammo_{backbone.slug}")
    return model, base, preprocessing
