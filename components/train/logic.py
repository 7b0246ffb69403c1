"""Training: the paper's three-stage transfer-learning schedule for one backbone, fast on GPUs.

Schedule (:func:`plan_stages`; every length and rate is a ``train.*`` setting):

1. ``stage1``: backbone frozen, only the new head trains (``stage1_epochs`` at ``stage1_lr``).
2. ``stage2``: the last layers of the backbone unfrozen (the paper's per-backbone count or share,
   otherwise the last ``stage2_unfreeze_fraction``), ``stage2_epochs`` at ``stage2_lr``.
3. ``stage3``: everything unfrozen, ``stage3_lr`` until early stopping on validation loss
   (``early_stopping_patience``, best weights restored) or ``stage3_max_epochs``.

Adam (a new one per stage), categorical cross-entropy, the balance step's class weights when it
wrote some; ReduceLROnPlateau on the *training* loss (factor 0.1, ``min_delta``, patience
``plateau_patience`` in stages 1-2 and ``stage3_plateau_patience`` in stage 3, down to
``min_lr``); the weights with the best validation loss over all stages are exported. Frozen
BatchNormalization layers run in inference mode (Keras does this for any layer with
``trainable=False``), so their moving statistics stay put.

Speed: ``mixed_float16`` (softmax in float32) and XLA when a GPU is present (``train.mixed_precision``
/ ``train.jit_compile``: auto | on | off); several GPUs -> ``tf.distribute.MirroredStrategy`` with
the batch scaled by the replica count. Input pipeline and augmentation: :mod:`.inputs`;
checkpoints, resume and the non-finite-loss stop: :mod:`.checkpoints`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mammo.components.config import CLASS_NAMES, Config, TrainConfig
from mammo.components.contracts import (
    CHECKPOINT_BEST_WEIGHTS,
    CHECKPOINT_EARLY_STOPPING,
    CHECKPOINT_LAST_WEIGHTS,
    CHECKPOINT_OPTIMIZER,
    CHECKPOINTS,
    HISTORY,
    MODEL_KERAS,
    TENSORBOARD,
    read_report,
    write_json,
    write_report,
)
from mammo.components.train.backbones import (
    Backbone,
    build_model,
    get_backbone,
    input_size_of,
    resolve_weights,
    weights_cache_dir,
)
from mammo.components.train.checkpoints import (
    STAGE_NAMES,
    CheckpointStore,
    EpochCheckpoint,
    NaNGuard,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
    TrainingState,
    restore_optimizer,
)
from mammo.components.train.inputs import (
    AugmentedTrainer,
    augmentation,
    count_records,
    make_dataset,
    patch_size,
    split_files,
)

log = logging.getLogger(__name__)

_ON, _OFF = {"on", "true", "1", "yes"}, {"off", "false", "0", "no"}


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
    #: the loss weight per class (the balance step's ``class_weights``; empty = unweighted)
    class_weights: dict[str, float] = field(default_factory=dict)
    #: backbone layers left trainable in each stage (stage 1: none)
    trainable_layers_per_stage: list[int] = field(default_factory=list)


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


# -- the schedule --------------------------------------------------------------------------------


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
    if backbone.frozen_in_stage2:
        n_frozen = backbone.frozen_in_stage2
    else:
        frozen_share = backbone.frozen_fraction_in_stage2 or 1 - cfg.stage2_unfreeze_fraction
        n_frozen = int(round(n_base_layers * frozen_share))
    n_frozen = max(0, min(n_frozen, n_base_layers))
    return [
        Stage("stage1", None, cfg.stage1_lr, cfg.stage1_epochs, cfg.plateau_patience, False),
        Stage("stage2", n_frozen, cfg.stage2_lr, cfg.stage2_epochs, cfg.plateau_patience, False),
        Stage("stage3", 0, cfg.stage3_lr, cfg.stage3_max_epochs, cfg.stage3_plateau_patience, True),
    ]


def trainable_layers(stage: Stage, n_base_layers: int) -> int:
    """Backbone layers that train in ``stage``."""
    return 0 if stage.frozen_layers is None else n_base_layers - stage.frozen_layers


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


def class_weights_of(dataset_dir: str | Path) -> dict[str, float]:
    """The loss weights the balance step wrote into its report (empty unless ``balance.mode=class_weights``)."""
    report = read_report(dataset_dir)
    weights = report.get("class_weights") or {}
    unknown = sorted(set(weights) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"{dataset_dir}: report class_weights name unknown classes {unknown}; "
                         f"expected names from {list(CLASS_NAMES)}")
    return {c: float(w) for c, w in weights.items()}


def run(dataset_dir: str | Path, backbone: str, out_dir: str | Path, cfg: Config,
        tensorboard_dir: str | Path | None = None, checkpoint_dir: str | None = None, *,
        callbacks: Sequence[keras.callbacks.Callback] = (), acceleration: Acceleration | None = None) -> TrainResult:
    """Train one backbone on a balanced dataset; writes the model, its history and ``report.json`` to ``out_dir``.

    The KFP component and ``mammo train`` both call this, so they train the same way.

    Args:
        dataset_dir: the balance_split output (train and validation TFRecords, its report with the
            class weights, which are applied when present).
        backbone: a registry name or ``keras:<Application>`` (see :mod:`.backbones`).
        tensorboard_dir: TensorBoard logs (default a folder in ``out_dir``).
        checkpoint_dir: per-epoch checkpoints, local or ``gs://`` (default ``train.checkpoint_dir``,
            else a folder in ``out_dir``); with ``train.resume`` a saved state there is continued.
        callbacks: extra Keras callbacks, added to every stage's ``fit``.
        acceleration: devices and precision (default :func:`resolve_acceleration` of ``cfg.train``).
    """
    return _train(dataset_dir, backbone, out_dir, cfg.train, cfg.seed, class_weights_of(dataset_dir),
                  tensorboard_dir=tensorboard_dir, checkpoint_dir=checkpoint_dir, callbacks=callbacks,
                  acceleration=acceleration)


def _train(dataset_dir: str | Path, backbone_name: str, out_dir: str | Path, cfg: TrainConfig, seed: int,
           class_weights: dict[str, float], *, tensorboard_dir: str | Path | None, checkpoint_dir: str | None,
           callbacks: Sequence[keras.callbacks.Callback], acceleration: Acceleration | None) -> TrainResult:
    start = time.time()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tb_dir = Path(tensorboard_dir) if tensorboard_dir else out_dir / TENSORBOARD
    backbone = get_backbone(backbone_name, cfg)
    accel = acceleration or resolve_acceleration(cfg)
    store = CheckpointStore(checkpoint_dir or cfg.checkpoint_dir or out_dir / CHECKPOINTS)
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
    image_size = patch_size(train_files)
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
            trainer = AugmentedTrainer(net, augmentation(cfg, seed), name=f"train_{backbone.slug}")
        if resumed:
            net.load_weights(str(store.path(CHECKPOINT_LAST_WEIGHTS)))
        log.info("%s: %d backbone layers, %d params, input %d, batch %d x %d replica(s), %d training patches, "
                 "preprocessing %s, weights %s, class weights %s, %s, mixed precision %s, XLA %s", backbone_name,
                 len(base.layers), net.count_params(), input_size, batch, accel.replicas, n_train, preprocessing,
                 cfg.weights, class_weights or "none", accel.device, accel.mixed_precision, accel.jit_compile)

        # equal training batches: one trace (one XLA compilation); fewer than a batch of patches: keep them
        train_ds = make_dataset(train_files, image_size, global_batch, True, seed, cfg.shuffle_buffer,
                                drop_remainder=n_train >= global_batch, num_records=n_train)
        val_ds = make_dataset(val_files, image_size, global_batch, False, seed, num_records=count_records(val_files))
        steps = cfg.steps_per_epoch or None
        if steps:
            train_ds = train_ds.repeat()
        images_per_epoch = steps * global_batch if steps else (n_train // global_batch * global_batch or n_train)
        # Keras wants a weight for every class index; a class without training patches weighs nothing anyway
        weights_by_index = {i: class_weights.get(c, 1.0) for i, c in enumerate(CLASS_NAMES)} if class_weights else None
        stages = plan_stages(cfg, backbone, len(base.layers))
        tensorboard = keras.callbacks.TensorBoard(log_dir=str(tb_dir), write_graph=False)

        for index, stage in enumerate(stages):
            if index < state.stage_index or stage.epochs <= 0 or state.epochs_done[index] >= stage.epochs:
                continue
            continuing = index == state.stage_index and state.epochs_done[index] > 0
            _run_stage(trainer, net, base, stage, index, state, store, cfg, train_ds, val_ds, steps,
                       weights_by_index, accel, backbone_name, tensorboard, images_per_epoch, continuing,
                       list(callbacks))
            state.stage_index = max(state.stage_index, index + 1)
        state.stage_index = len(stages)

        # export: the best weights (validation loss, all stages) in a float32 copy of the classifier
        keras.mixed_precision.set_global_policy("float32")
        export, _, _ = build_model(backbone, image_size, cfg, weights=None)
        saved = [p for p in (store.path(CHECKPOINT_BEST_WEIGHTS), store.path(CHECKPOINT_LAST_WEIGHTS)) if p.exists()]
        if saved:
            export.load_weights(str(saved[0]))
        else:  # no epoch ran (every stage length 0)
            export.set_weights(net.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    model_path = out_dir / MODEL_KERAS
    export.save(model_path)
    val_loss, val_acc, val_auc = _evaluate(export, val_ds, cfg.run_eagerly)
    state.seconds += time.time() - start
    store.finish(state)
    result = TrainResult(
        backbone=backbone_name, model_path=str(model_path), input_size=input_size, batch_size=batch,
        preprocessing=preprocessing, weights=cfg.weights, epochs_per_stage=list(state.epochs_done),
        best_val_loss=val_loss, val_accuracy=val_acc, val_auc=val_auc, seconds=round(state.seconds, 1),
        train_patches=n_train,
        images_per_second=round(state.images_seen / state.fit_seconds, 1) if state.fit_seconds else 0.0,
        global_batch_size=global_batch, replicas=accel.replicas, mixed_precision=accel.mixed_precision,
        jit_compile=accel.jit_compile and not cfg.run_eagerly, device=accel.device, restarts=state.restarts,
        checkpoint_dir=store.location, tensorboard_dir=str(tb_dir), class_weights=dict(class_weights),
        trainable_layers_per_stage=[trainable_layers(s, len(base.layers)) for s in stages],
    )
    write_json(out_dir / HISTORY, state.history)
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
            jit_compile=accel.jit_compile and not cfg.run_eagerly,
            run_eagerly=cfg.run_eagerly,
        )
        if continuing:
            arrays = store.load_arrays(CHECKPOINT_OPTIMIZER)
            if arrays is not None and restore_optimizer(trainer.optimizer, trainer.trainable_variables, arrays):
                trainer.optimizer.learning_rate = lr  # the reduced rate, whatever the saved variables say
    plateau = ResumableReduceLROnPlateau(
        initial_state=state.plateau if continuing else None, monitor="loss", factor=0.1,
        min_delta=cfg.min_delta, patience=stage.plateau_patience, min_lr=cfg.min_lr, verbose=0)
    early = None
    if stage.early_stopping:
        best_weights = store.load_arrays(CHECKPOINT_EARLY_STOPPING) if continuing else None
        early = ResumableEarlyStopping(
            initial_state=state.early_stopping if continuing else None, initial_best_weights=best_weights,
            monitor="val_loss", min_delta=cfg.min_delta, patience=cfg.early_stopping_patience,
            restore_best_weights=True, verbose=0)
    state.stage_index = index
    callbacks = [NaNGuard(backbone_name, stage.name, store, state), plateau]
    callbacks += [early] if early else []
    callbacks += [EpochCheckpoint(store, state, index, stage.name, stage.epochs, net, plateau, early,
                                  images_per_epoch), tensorboard, ProgressLog(stage.name, backbone_name),
                  *extra_callbacks]
    trainable = sum(int(np.prod(w.shape)) for w in trainer.trainable_weights)
    first = state.global_epoch
    last = first + stage.epochs - state.epochs_done[index]
    log.info("%s %s: lr %g, %d backbone layers and %d params trainable, epochs %d..%d%s", backbone_name, stage.name,
             lr, trainable_layers(stage, len(base.layers)), trainable, first + 1, last,
             " (resumed)" if continuing else "")
    trainer.fit(train_ds, validation_data=val_ds, epochs=last, initial_epoch=first, steps_per_epoch=steps,
                class_weight=class_weight, callbacks=callbacks, shuffle=False, verbose=0)


def _evaluate(model: keras.Model, ds, run_eagerly: bool) -> tuple[float, float, float]:
    model.compile(loss="categorical_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc")],
                  run_eagerly=run_eagerly)
    res = model.evaluate(ds.map(lambda x, y: (tf.cast(x, tf.float32), y)), verbose=0, return_dict=True)
    return float(res["loss"]), float(res["accuracy"]), float(res["auc"])


def checkpoint_key(uri: str) -> str:
    """A short stable name for a task's checkpoint subfolder (e.g. from its output artifact URI)."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


__all__ = ["Acceleration", "Stage", "TrainResult", "checkpoint_key", "class_weights_of", "plan_stages",
           "resolve_acceleration", "run", "set_trainable", "trainable_layers"]
