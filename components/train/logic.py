"""Training: the paper's three-stage transfer-learning schedule for one backbone, fast on GPUs.

Schedule (:func:`plan_stages`; every length and rate is a ``train.*`` setting):

1. ``stage1``: backbone frozen, only the new head trains (``stage1_epochs`` at ``stage1_lr``).
2. ``stage2``: the last layers of the backbone unfrozen (the paper's per-backbone count, otherwise
   the last ``stage2_unfreeze_fraction``), ``stage2_epochs`` at ``stage2_lr``.
3. ``stage3``: everything unfrozen, ``stage3_lr`` until early stopping on validation loss
   (``early_stopping_patience``, best weights restored) or ``stage3_max_epochs``.

Adam (a new one per stage), categorical cross-entropy; ReduceLROnPlateau on the *training* loss
(factor 0.1, ``min_delta``, patience ``plateau_patience`` in stages 1-2 and
``stage3_plateau_patience`` in stage 3, down to ``min_lr``); the weights with the best validation
loss over all stages are exported. Frozen BatchNormalization layers run in inference mode (Keras
does this for any layer with ``trainable=False``), so their moving statistics stay put.

Input pipeline (:func:`make_dataset`): TFRecord files read in parallel, PNGs decoded in parallel
into uint8, cached, shuffled with the seed, batched, prefetched; only TensorFlow ops per example.
Augmentation (:func:`augmentation`: shift, zoom, shear, rotation, flips, ``fill_mode``; never
brightness) is a stack of Keras preprocessing layers applied by :class:`AugmentedTrainer` on the
accelerator to each training batch, outside the XLA-compiled step (Keras' image transforms have no
XLA kernels); validation and the exported model never augment.

Speed: ``mixed_float16`` (softmax in float32) and XLA when a GPU is present (``train.mixed_precision``
/ ``train.jit_compile``: auto | on | off); several GPUs -> ``tf.distribute.MirroredStrategy`` with
the batch scaled by the replica count.

Robustness: after every epoch the weights, the optimizer, the callbacks' counters and the history
go to the checkpoint folder (:class:`CheckpointStore`, local or ``gs://``); a restarted task (KFP
retry) resumes at the stage and epoch where it stopped. A non-finite loss stops the run with
:class:`NonFiniteLossError`. Outputs: ``model.keras`` (float32, loads without custom objects),
``history.json`` (per stage, per epoch, with the learning rate), ``report.json``, TensorBoard logs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mammo.components import storage
from mammo.components.contracts import write_report
from mammo.components.config import CLASS_NAMES, TrainConfig
from mammo.components.train.backbones import (
    Backbone,
    build_model,
    get_backbone,
    input_size_of,
    resolve_weights,
    weights_cache_dir,
)

log = logging.getLogger(__name__)

STAGE_NAMES = ("stage1", "stage2", "stage3")
_ON, _OFF = {"on", "true", "1", "yes"}, {"off", "false", "0", "no"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped (the last good checkpoint is kept)."""


@dataclass
class TrainResult:
    backbone: str
    model_path: str
    input_size: int
    #: per accelerator
    batch_size: int
    preprocessing: str
    weights: str
    epochs_per_stage: list[int] = field(default_factory=list)
    best_val_loss: float = float("nan")
    val_accuracy: float = float("nan")
    val_auc: float = float("nan")
    #: wall time of the whole training, summed over restarts
    seconds: float = 0.0
    train_patches: int = 0
    #: training images per second of fit() time (validation passes included)
    images_per_second: float = 0.0
    global_batch_size: int = 0
    replicas: int = 1
    mixed_precision: bool = False
    jit_compile: bool = False
    device: str = "CPU"
    #: times this training was resumed from a checkpoint
    restarts: int = 0
    checkpoint_dir: str = ""
    tensorboard_dir: str = ""


# -- acceleration --------------------------------------------------------------------------------


@dataclass
class Acceleration:
    """How this process trains: devices, distribution, precision, XLA."""

    strategy: Any
    gpus: int
    replicas: int
    mixed_precision: bool
    jit_compile: bool

    @property
    def device(self) -> str:
        return f"{self.gpus} GPU" if self.gpus else "CPU"


def _switch(value: str | bool, key: str, auto: bool) -> bool:
    text = str(value).strip().lower()
    if text == "auto":
        return auto
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise ValueError(f"train.{key} must be auto, on or off, got {value!r}")


def resolve_acceleration(cfg: TrainConfig) -> Acceleration:
    """Mixed precision and XLA default to on with a GPU; MirroredStrategy with several GPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    mixed = _switch(cfg.mixed_precision, "mixed_precision", bool(gpus))
    xla = _switch(cfg.jit_compile, "jit_compile", bool(gpus))
    if len(gpus) > 1 and cfg.multi_gpu:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    return Acceleration(strategy, len(gpus), int(strategy.num_replicas_in_sync), mixed, xla)


# -- input pipeline ------------------------------------------------------------------------------


def split_files(dataset_dir: str | Path, split: str) -> list[str]:
    """The TFRecord files of one split: ``<split>.tfrecord`` and/or shards ``<split>-*.tfrecord``."""
    d = Path(dataset_dir)
    files = sorted(str(p) for p in d.glob(f"{split}.tfrecord")) + sorted(str(p) for p in d.glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"{d}: no {split}.tfrecord or {split}-*.tfrecord (is it the balance step's output?)")
    return files


def _parse(image_size: int):
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        image = tf.ensure_shape(tf.io.decode_png(ex["image"], channels=1), [image_size, image_size, 1])
        return image, ex["label"]

    return parse


def make_dataset(files: Sequence[str | Path], image_size: int, batch_size: int, training: bool, seed: int,
                 shuffle_buffer: int = 4096, drop_remainder: bool = False,
                 num_records: int | None = None) -> tf.data.Dataset:
    """Batches of (uint8 images ``[B, S, S, 1]``, one-hot float32 labels ``[B, 5]``).

    Files are interleaved and PNGs decoded in parallel, the decoded uint8 patches cached (4x less
    memory than float), then shuffled (training; with ``seed``, reshuffled each epoch), batched and
    prefetched. Parallel steps keep their order (``deterministic``), so a seed fixes the batches.
    ``drop_remainder`` keeps every batch the same shape (one trace, one XLA compilation);
    ``num_records`` declares the dataset's size so Keras knows the number of batches.
    """
    files = [str(f) for f in files]
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 8)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(_parse(image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if num_records is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_records))
    ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda x, y: (x, tf.one_hot(y, len(CLASS_NAMES), dtype=tf.float32)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def count_records(files: Sequence[str | Path] | str | Path) -> int:
    if isinstance(files, (str, Path)):
        files = [files]
    return int(tf.data.TFRecordDataset([str(f) for f in files]).reduce(0, lambda n, _: n + 1).numpy())


def _patch_size(files: Sequence[str]) -> int:
    for rec in tf.data.TFRecordDataset(list(files)).take(1):
        ex = tf.train.Example.FromString(rec.numpy())
        return int(tf.io.decode_png(ex.features.feature["image"].bytes_list.value[0]).shape[0])
    raise ValueError(f"{files[0]} holds no records")


# -- augmentation and the training wrapper ---------------------------------------------------------


def augmentation(cfg: TrainConfig, seed: int) -> keras.Sequential:
    """The paper's augmentation (its notebooks' ``ImageDataGenerator``) as Keras preprocessing layers.

    Shift and zoom are fractions of the side, rotation up to +-``rotation_degrees``, both flips,
    ``fill_mode`` (the notebooks' ``wrap``); no brightness change. ``shear`` is the generator's
    ``shear_range``, an angle in degrees, applied as the shear factor ``tan(angle)``. The layers
    compute in float32 even under mixed precision.
    """
    layers = [
        keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode=cfg.fill_mode, seed=seed, dtype="float32"),
        keras.layers.RandomZoom(cfg.zoom, cfg.zoom, fill_mode=cfg.fill_mode, seed=seed + 1, dtype="float32"),
        keras.layers.RandomRotation(cfg.rotation_degrees / 360.0, fill_mode=cfg.fill_mode, seed=seed + 2,
                                    dtype="float32"),
    ]
    if cfg.shear:
        factor = math.tan(math.radians(cfg.shear))
        layers.append(keras.layers.RandomShear(factor, factor, fill_mode=cfg.fill_mode, seed=seed + 3,
                                               dtype="float32"))
    if cfg.flips:
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=seed + 4, dtype="float32"))
    return keras.Sequential(layers, name="augmentation")


class AugmentedTrainer(keras.Model):
    """What ``fit`` trains: uint8 batches -> float32 -> (training only) augmentation -> the classifier.

    The classifier ``net`` is what gets exported; this wrapper is never saved. Its train function
    takes each batch from the (distributed) iterator, augments it per replica on the accelerator in
    a plain ``tf.function`` and hands it to Keras' own (optionally XLA-compiled) train step. The
    augmentation layers are deliberately not tracked as sub-layers, so Keras does not switch XLA
    off for the whole model because of them; their seed states are not part of checkpoints.
    """

    def __init__(self, net: keras.Model, augment: keras.Model | None, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        object.__setattr__(self, "_augment", augment)  # untracked on purpose (see the class docstring)

    def call(self, inputs, training=False):
        return self.net(keras.ops.cast(inputs, "float32"), training=training)

    def _augment_batch(self, data):
        x, *rest = data
        x = keras.ops.cast(x, "float32")
        if self._augment is not None:
            x = self._augment(x, training=True)
        return (x, *rest)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        if self.steps_per_execution != 1:
            raise ValueError("AugmentedTrainer supports steps_per_execution=1 only")
        super().make_train_function(force=True)
        step = self.train_function
        strategy = self.distribute_strategy
        augment = tf.function(self._augment_batch, reduce_retracing=True)

        def train_function(iterator):
            # StopIteration / OutOfRangeError end the epoch (Keras catches both)
            data = iterator[0] if isinstance(iterator, (list, tuple)) else next(iterator)
            return step([strategy.run(augment, args=(data,))])

        self.train_function = train_function
        return train_function


def set_trainable(base: keras.Model, frozen_layers: int | None) -> None:
    """Freeze the first ``frozen_layers`` backbone layers (None = all frozen, 0 = none frozen).

    A frozen BatchNormalization layer runs in inference mode (Keras' rule for ``trainable=False``).
    """
    if frozen_layers is None:
        base.trainable = False
        return
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= frozen_layers


# -- the schedule --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    #: backbone layers kept frozen (None = the whole backbone)
    frozen_layers: int | None
    lr: float
    epochs: int
    plateau_patience: int
    early_stopping: bool


def plan_stages(cfg: TrainConfig, backbone: Backbone, n_base_layers: int) -> list[Stage]:
    """The three stages for a backbone with ``n_base_layers`` layers."""
    n_frozen = backbone.frozen_in_stage2 or int(round(n_base_layers * (1 - cfg.stage2_unfreeze_fraction)))
    n_frozen = max(0, min(n_frozen, n_base_layers))
    return [
        Stage("stage1", None, cfg.stage1_lr, cfg.stage1_epochs, cfg.plateau_patience, False),
        Stage("stage2", n_frozen, cfg.stage2_lr, cfg.stage2_epochs, cfg.plateau_patience, False),
        Stage("stage3", 0, cfg.stage3_lr, cfg.stage3_max_epochs, cfg.stage3_plateau_patience, True),
    ]


# -- checkpoints ---------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """Where a training stands; ``state.json`` in the checkpoint folder, written after each epoch."""

    backbone: str
    #: the stage in progress, or the next one when the previous finished
    stage_index: int = 0
    epochs_done: list[int] = field(default_factory=lambda: [0, 0, 0])
    #: epochs completed over all stages (Keras' index of the next epoch)
    global_epoch: int = 0
    best_val_loss: float | None = None
    best_epoch: int = -1
    #: learning rate of the stage in progress (after plateau reductions)
    lr: float | None = None
    plateau: dict[str, Any] = field(default_factory=dict)
    early_stopping: dict[str, Any] = field(default_factory=dict)
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0
    fit_seconds: float = 0.0
    images_seen: int = 0
    restarts: int = 0
    #: the training finished and exported its model (a new training in this folder starts afresh)
    completed: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class CheckpointStore:
    """The checkpoint folder: local (a path, e.g. a mounted volume) or ``gs://`` (mirrored from a scratch folder).

    Files: ``last.weights.h5`` (classifier weights after the last epoch), ``optimizer.npz``,
    ``best.weights.h5`` (best validation loss so far), ``early_stopping.npz`` (stage 3's best
    weights), ``state.json`` (:class:`TrainingState`, written last so it only names complete files).
    """

    def __init__(self, location: str | Path, scratch: Path):
        self.location = str(location)
        self.remote = storage.is_gcs(self.location)
        self.dir = scratch if self.remote else Path(self.location)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    def load_state(self) -> TrainingState | None:
        """The saved state (fetching the folder from GCS first), or None for a fresh start."""
        if self.remote:
            for entry in storage.list_files(self.location):
                blob = storage.client().bucket(storage.split_gcs(entry.uri)[0]).blob(storage.split_gcs(entry.uri)[1])
                target = self.dir / entry.rel
                target.parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(str(target), retry=storage.RETRY)
        state_file = self.dir / "state.json"
        if not state_file.exists():
            return None
        return TrainingState.from_dict(json.loads(state_file.read_text()))

    def save_state(self, state: TrainingState, changed: Sequence[str]) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(state), indent=1))
        tmp.replace(self.dir / "state.json")
        if self.remote:
            for name in [*changed, "state.json"]:
                uri = storage.join(self.location, name)
                bucket, obj = storage.split_gcs(uri)
                storage.client().bucket(bucket).blob(obj).upload_from_filename(str(self.dir / name),
                                                                                retry=storage.RETRY)

    #: files only a resumed training needs; removed when the training completes
    RESUME_FILES = ("last.weights.h5", "optimizer.npz", "early_stopping.npz", "best.weights.h5")

    def finish(self, state: TrainingState) -> None:
        """Mark the training completed and drop the weight files (the exported model holds the result)."""
        state.completed = True
        self.save_state(state, [])
        for name in self.RESUME_FILES:
            (self.dir / name).unlink(missing_ok=True)
            if self.remote:
                bucket, obj = storage.split_gcs(storage.join(self.location, name))
                blob = storage.client().bucket(bucket).blob(obj)
                if blob.exists(retry=storage.RETRY):
                    blob.delete(retry=storage.RETRY)

    def save_weights(self, net: keras.Model, name: str) -> None:
        tmp = self.dir / f"tmp-{name}"
        net.save_weights(str(tmp))
        tmp.replace(self.dir / name)

    def save_arrays(self, arrays: Sequence[np.ndarray], name: str) -> None:
        tmp = self.dir / f"tmp-{name}"
        with open(tmp, "wb") as fh:
            np.savez(fh, *arrays)
        tmp.replace(self.dir / name)

    def load_arrays(self, name: str) -> list[np.ndarray] | None:
        path = self.dir / name
        if not path.exists():
            return None
        with np.load(path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]


def _optimizer_arrays(optimizer) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in optimizer.variables]


def _restore_optimizer(optimizer, trainable_variables, arrays: list[np.ndarray]) -> bool:
    if not optimizer.built:
        optimizer.build(trainable_variables)
    variables = optimizer.variables
    if len(variables) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays)):
        log.warning("saved optimizer state does not match this stage's variables: starting a fresh optimizer")
        return False
    for v, a in zip(variables, arrays):
        v.assign(a)
    return True


# -- callbacks -----------------------------------------------------------------------------------


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a restart (``state()`` / ``initial_state``)."""

    KEYS = ("wait", "best", "cooldown_counter")

    def __init__(self, initial_state: dict[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._initial_state = initial_state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in self.KEYS:
            if key in self._initial_state:
                setattr(self, key, self._initial_state[key])

    def state(self) -> dict[str, Any]:
        return {k: _jsonable(getattr(self, k, None)) for k in self.KEYS}


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters and best weights survive a restart."""

    KEYS = ("wait", "best", "best_epoch")

    def __init__(self, initial_state: dict[str, Any] | None = None, initial_best_weights=None, **kwargs):
        super().__init__(**kwargs)
        self._initial_state = initial_state or {}
        self._initial_best_weights = initial_best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in self.KEYS:
            if self._initial_state.get(key) is not None:
                setattr(self, key, self._initial_state[key])
        if self._initial_best_weights is not None:
            self.best_weights = self._initial_best_weights

    def state(self) -> dict[str, Any]:
        return {k: _jsonable(getattr(self, k, None)) for k in self.KEYS}


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class NaNGuard(keras.callbacks.Callback):
    """Stops the run with a clear error when the epoch's loss is not finite (before it is checkpointed)."""

    def __init__(self, backbone: str, stage: str, checkpoint_dir: str):
        super().__init__()
        self.backbone, self.stage, self.checkpoint_dir = backbone, stage, checkpoint_dir

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key in ("loss", "val_loss"):
            value = logs.get(key)
            if value is not None and not math.isfinite(float(value)):
                raise NonFiniteLossError(
                    f"{self.backbone} {self.stage} epoch {epoch + 1}: {key} is {float(value)}; training stopped. "
                    f"The last finite epoch is checkpointed in {self.checkpoint_dir}. Lower this stage's learning "
                    "rate (train.stageN_lr) or switch mixed precision off (train.mixed_precision=off).")


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: history, best weights, last weights, optimizer, callback counters, state.json."""

    def __init__(self, store: CheckpointStore, state: TrainingState, stage_index: int, stage: Stage, net: keras.Model,
                 plateau: ResumableReduceLROnPlateau, early: ResumableEarlyStopping | None, images_per_epoch: int):
        super().__init__()
        self.store, self.state, self.stage_index, self.stage, self.net = store, state, stage_index, stage, net
        self.plateau, self.early, self.images_per_epoch = plateau, early, images_per_epoch
        self._lr = float("nan")
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        st = self.state
        record = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.floating, np.integer))}
        record.update(epoch=epoch + 1, lr=self._lr, seconds=round(time.time() - self._t0, 2))
        hist = st.history.setdefault(self.stage.name, {})
        for k, v in record.items():
            hist.setdefault(k, []).append(v)
        st.epochs_done[self.stage_index] += 1
        st.global_epoch = epoch + 1
        st.fit_seconds += time.time() - self._t0
        st.images_seen += self.images_per_epoch
        changed = ["last.weights.h5", "optimizer.npz"]
        val_loss = logs.get("val_loss")
        if val_loss is not None and (st.best_val_loss is None or float(val_loss) < st.best_val_loss):
            st.best_val_loss, st.best_epoch = float(val_loss), epoch + 1
            self.store.save_weights(self.net, "best.weights.h5")
            changed.append("best.weights.h5")
        if self.early is not None:
            if self.early.best_weights is not None and self.early.best_epoch == epoch:
                self.store.save_arrays(self.early.best_weights, "early_stopping.npz")
                changed.append("early_stopping.npz")
            st.early_stopping = self.early.state()
        self.store.save_weights(self.net, "last.weights.h5")
        self.store.save_arrays(_optimizer_arrays(self.model.optimizer), "optimizer.npz")
        st.plateau = self.plateau.state()
        st.lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if st.epochs_done[self.stage_index] >= self.stage.epochs or self.model.stop_training:
            # the stage is over: a restart begins the next one afresh
            st.stage_index, st.lr, st.plateau, st.early_stopping = self.stage_index + 1, None, {}, {}
        self.store.save_state(st, changed)


class ProgressLog(keras.callbacks.Callback):
    """One log line per epoch (KFP logs and terminals both read it)."""

    def __init__(self, stage: str, backbone: str):
        super().__init__()
        self.stage, self.backbone, self.t0 = stage, backbone, time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        log.info("%s %s epoch %d: loss %.4f acc %.3f auc %.3f | val loss %.4f acc %.3f auc %.3f | lr %.1e | %.1fs",
                 self.backbone, self.stage, epoch + 1, logs.get("loss", float("nan")),
                 logs.get("accuracy", float("nan")),
                 logs.get("auc", float("nan")), logs.get("val_loss", float("nan")),
                 logs.get("val_accuracy", float("nan")), logs.get("val_auc", float("nan")), lr, time.time() - self.t0)


# -- the step ------------------------------------------------------------------------------------


def train_backbone(dataset_dir: str | Path, backbone_name: str, out_dir: str | Path, cfg: TrainConfig,
                   seed: int, class_weights: dict[str, float] | None = None, *,
                   tensorboard_dir: str | Path | None = None, checkpoint_dir: str | None = None,
                   callbacks: Sequence[keras.callbacks.Callback] = (),
                   acceleration: Acceleration | None = None) -> TrainResult:
    """Train one backbone; writes ``model.keras``, ``history.json``, ``report.json`` to ``out_dir``.

    Args:
        dataset_dir: the balance step's output (``train`` and ``validation`` TFRecords).
        tensorboard_dir: TensorBoard logs (default ``out_dir/tensorboard``).
        checkpoint_dir: per-epoch checkpoints, local or ``gs://`` (default ``train.checkpoint_dir``,
            else ``out_dir/checkpoints``); with ``train.resume`` a saved state there is continued.
        callbacks: extra Keras callbacks, added to every stage's ``fit``.
        acceleration: devices and precision (default :func:`resolve_acceleration` of ``cfg``).
    """
    start = time.time()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tb_dir = Path(tensorboard_dir) if tensorboard_dir else out_dir / "tensorboard"
    backbone = get_backbone(backbone_name)
    accel = acceleration or resolve_acceleration(cfg)
    store = CheckpointStore(checkpoint_dir or cfg.checkpoint_dir or out_dir / "checkpoints", out_dir / ".checkpoints")
    state = store.load_state() if cfg.resume else None
    if state is not None and state.completed:
        log.info("%s: the training in %s had completed; starting a new one", backbone_name, store.location)
        state = None
    if state is not None and state.backbone != backbone_name:
        raise ValueError(f"{store.location} holds checkpoints of {state.backbone}, not {backbone_name}: "
                         "use another train.checkpoint_dir or train.resume=false")
    resumed = state is not None
    if state is None:
        state = TrainingState(backbone=backbone_name)
    else:
        state.restarts += 1
        log.info("%s: resuming from %s at %s epoch %d (global epoch %d, restart %d)", backbone_name, store.location,
                 STAGE_NAMES[min(state.stage_index, 2)], state.epochs_done[min(state.stage_index, 2)] + 1,
                 state.global_epoch + 1, state.restarts)

    train_files, val_files = split_files(dataset_dir, "train"), split_files(dataset_dir, "validation")
    image_size = _patch_size(train_files)
    batch = cfg.batch_size or backbone.batch_size
    global_batch = batch * accel.replicas
    input_size = input_size_of(backbone, cfg)
    # a resumed training takes its weights from the checkpoint
    weights = None if resumed else resolve_weights(cfg.weights, weights_cache_dir(cfg))
    n_train = count_records(train_files)
    keras.utils.set_random_seed(seed)
    previous_policy = keras.mixed_precision.global_policy()
    if accel.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with accel.strategy.scope():
            net, base, preprocessing = build_model(backbone, image_size, cfg, weights=weights)
            augment = augmentation(cfg, seed)
            trainer = AugmentedTrainer(net, augment, name=f"train_{backbone_name}")
        if resumed:
            net.load_weights(str(store.path("last.weights.h5")))
        log.info("%s: %d backbone layers, %d params, input %d, batch %d x %d replica(s), %d training patches, "
                 "preprocessing %s, weights %s, %s, mixed precision %s, XLA %s", backbone_name, len(base.layers),
                 net.count_params(), input_size, batch, accel.replicas, n_train, preprocessing, cfg.weights,
                 accel.device, accel.mixed_precision, accel.jit_compile)

        # equal training batches: one trace (one XLA compilation); fewer than a batch of patches: keep them
        train_ds = make_dataset(train_files, image_size, global_batch, True, seed, cfg.shuffle_buffer,
                                drop_remainder=n_train >= global_batch, num_records=n_train)
        val_ds = make_dataset(val_files, image_size, global_batch, False, seed, num_records=count_records(val_files))
        steps = cfg.steps_per_epoch or None
        if steps:
            train_ds = train_ds.repeat()
        images_per_epoch = steps * global_batch if steps else (n_train // global_batch * global_batch or n_train)
        weights_by_index = {CLASS_NAMES.index(c): w for c, w in (class_weights or {}).items()} or None
        stages = plan_stages(cfg, backbone, len(base.layers))
        tensorboard = keras.callbacks.TensorBoard(log_dir=str(tb_dir), write_graph=False)

        for index, stage in enumerate(stages):
            if index < state.stage_index or stage.epochs <= 0:
                continue
            continuing = index == state.stage_index and state.epochs_done[index] > 0
            if state.epochs_done[index] >= stage.epochs:
                continue
            _run_stage(trainer, net, base, stage, index, state, store, cfg, train_ds, val_ds, steps,
                       weights_by_index, accel, backbone_name, tensorboard, images_per_epoch, continuing,
                       list(callbacks))
            state.stage_index = max(state.stage_index, index + 1)
        state.stage_index = len(stages)

        # export: the best weights (validation loss, all stages) in a float32 copy of the classifier
        keras.mixed_precision.set_global_policy("float32")
        export, _, _ = build_model(backbone, image_size, cfg, weights=None)
        saved = [p for p in (store.path("best.weights.h5"), store.path("last.weights.h5")) if p.exists()]
        if saved:
            export.load_weights(str(saved[0]))
        else:  # no epoch ran (every stage length 0)
            export.set_weights(net.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    model_path = out_dir / "model.keras"
    export.save(model_path)
    val_loss, val_acc, val_auc = _evaluate(export, val_ds)
    state.seconds += time.time() - start
    store.finish(state)
    if store.remote:
        shutil.rmtree(store.dir, ignore_errors=True)
    result = TrainResult(
        backbone=backbone_name, model_path=str(model_path), input_size=input_size, batch_size=batch,
        preprocessing=preprocessing, weights=cfg.weights, epochs_per_stage=list(state.epochs_done),
        best_val_loss=val_loss, val_accuracy=val_acc, val_auc=val_auc, seconds=round(state.seconds, 1),
        train_patches=n_train,
        images_per_second=round(state.images_seen / state.fit_seconds, 1) if state.fit_seconds else 0.0,
        global_batch_size=global_batch, replicas=accel.replicas, mixed_precision=accel.mixed_precision,
        jit_compile=accel.jit_compile, device=accel.device, restarts=state.restarts,
        checkpoint_dir=store.location, tensorboard_dir=str(tb_dir),
    )
    (out_dir / "history.json").write_text(json.dumps(state.history, indent=2))
    write_report(out_dir, "train", asdict(result))
    log.info("%s trained in %.0fs: epochs %s, val loss %.4f acc %.4f auc %.4f, %.1f images/s", backbone_name,
             state.seconds, state.epochs_done, val_loss, val_acc, val_auc, result.images_per_second)
    return result


def _run_stage(trainer: AugmentedTrainer, net, base, stage: Stage, index: int, state: TrainingState,
               store: CheckpointStore, cfg: TrainConfig, train_ds, val_ds, steps, class_weight,
               accel: Acceleration, backbone_name: str, tensorboard, images_per_epoch: int, continuing: bool,
               extra_callbacks: list) -> None:
    """One stage's ``fit``, continuing its optimizer and callbacks when resumed mid-stage."""
    set_trainable(base, stage.frozen_layers)
    lr = state.lr if continuing and state.lr else stage.lr
    with accel.strategy.scope():
        trainer.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr),
            loss="categorical_crossentropy",
            metrics=["accuracy", keras.metrics.AUC(name="auc")],
            jit_compile=accel.jit_compile,
        )
        if continuing:
            arrays = store.load_arrays("optimizer.npz")
            if arrays is not None and _restore_optimizer(trainer.optimizer, trainer.trainable_variables, arrays):
                trainer.optimizer.learning_rate = lr  # the reduced rate, whatever the saved variables say
    plateau = ResumableReduceLROnPlateau(
        initial_state=state.plateau if continuing else None, monitor="loss", factor=0.1,
        min_delta=cfg.min_delta, patience=stage.plateau_patience, min_lr=cfg.min_lr, verbose=0)
    early = None
    if stage.early_stopping:
        best_weights = store.load_arrays("early_stopping.npz") if continuing else None
        early = ResumableEarlyStopping(
            initial_state=state.early_stopping if continuing else None, initial_best_weights=best_weights,
            monitor="val_loss", min_delta=cfg.min_delta, patience=cfg.early_stopping_patience,
            restore_best_weights=True, verbose=0)
    state.stage_index = index
    callbacks = [NaNGuard(backbone_name, stage.name, store.location), plateau]
    callbacks += [early] if early else []
    callbacks += [EpochCheckpoint(store, state, index, stage, net, plateau, early, images_per_epoch), tensorboard,
                  ProgressLog(stage.name, backbone_name), *extra_callbacks]
    trainable = sum(int(np.prod(w.shape)) for w in trainer.trainable_weights)
    first = state.global_epoch
    last = first + stage.epochs - state.epochs_done[index]
    log.info("%s %s: lr %g, %d trainable params, epochs %d..%d%s", backbone_name, stage.name, lr, trainable, first + 1,
             last, " (resumed)" if continuing else "")
    trainer.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first, steps_per_epoch=steps,
                class_weight=class_weight, callbacks=callbacks, shuffle=False, verbose=0)


def _evaluate(model: keras.Model, ds) -> tuple[float, float, float]:
    model.compile(loss="categorical_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc")])
    res = model.evaluate(ds.map(lambda x, y: (tf.cast(x, tf.float32), y)), verbose=0, return_dict=True)
    return float(res["loss"]), float(res["accuracy"]), float(res["auc"])


def checkpoint_key(uri: str) -> str:
    """A short stable name for a task's checkpoint subfolder (e.g. from its output artifact URI)."""
    import hashlib

    return hashlib.sha256(uri.encode()).hexdigest()[:16]


__all__ = [
    "AugmentedTrainer", "CheckpointStore", "NonFiniteLossError", "Stage", "TrainResult", "TrainingState",
    "augmentation", "checkpoint_key", "count_records", "make_dataset", "plan_stages", "resolve_acceleration",
    "set_trainable", "split_files", "train_backbone",
]
