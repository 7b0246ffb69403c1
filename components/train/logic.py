"""Training: the paper's three-stage transfer-learning schedule for one backbone.

1. Stage 1: backbone frozen, only the new head trains (``stage1_epochs`` at ``stage1_lr``).
2. Stage 2: the last layers of the backbone unfrozen (the paper's per-backbone count, otherwise
   ``stage2_unfreeze_fraction``), ``stage2_epochs`` at ``stage2_lr``.
3. Stage 3: everything unfrozen, ``stage3_lr`` until early stopping on validation loss
   (``early_stopping_patience``, best weights restored) or ``stage3_max_epochs``.

Adam, categorical cross-entropy; ReduceLROnPlateau on the *training* loss (factor 0.1,
``min_delta``, patience ``plateau_patience`` in stages 1-2 and ``stage3_plateau_patience`` in
stage 3, down to ``min_lr``); the model with the best validation loss is kept. Augmentation runs
in the input pipeline (shift, zoom, shear, rotation, flips; ``fill_mode``; never brightness).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mammo.components.config import CLASS_NAMES, TrainConfig
from mammo.components.train.backbones import build_model, get_backbone

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    backbone: str
    model_path: str
    input_size: int
    batch_size: int
    preprocessing: str
    weights: str
    epochs_per_stage: list[int] = field(default_factory=list)
    best_val_loss: float = float("nan")
    val_accuracy: float = float("nan")
    val_auc: float = float("nan")
    seconds: float = 0.0
    train_patches: int = 0
    images_per_second: float = 0.0


def augmentation(cfg: TrainConfig, seed: int):
    """The paper's augmentation as Keras preprocessing layers (active only in training)."""
    import keras

    layers = [
        keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode=cfg.fill_mode, seed=seed),
        keras.layers.RandomZoom(cfg.zoom, cfg.zoom, fill_mode=cfg.fill_mode, seed=seed + 1),
        keras.layers.RandomRotation(cfg.rotation_degrees / 360.0, fill_mode=cfg.fill_mode, seed=seed + 2),
    ]
    if cfg.shear:
        layers.append(keras.layers.RandomShear(cfg.shear, cfg.shear, fill_mode=cfg.fill_mode, seed=seed + 3))
    if cfg.flips:
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=seed + 4))
    return keras.Sequential(layers, name="augmentation")


def make_dataset(path: Path, image_size: int, batch_size: int, training: bool, cfg: TrainConfig, seed: int):
    import tensorflow as tf

    from mammo.components.tfrecords import parse_fn

    ds = tf.data.TFRecordDataset(str(path)).map(parse_fn(image_size), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda x, y: (x, tf.one_hot(y, len(CLASS_NAMES))))
    ds = ds.cache()
    if training:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training:
        aug = augmentation(cfg, seed)
        ds = ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def count_records(path: Path) -> int:
    import tensorflow as tf

    return int(tf.data.TFRecordDataset(str(path)).reduce(0, lambda n, _: n + 1).numpy())


def set_trainable(base, frozen_layers: int | None) -> None:
    """Freeze the first ``frozen_layers`` backbone layers (None = all frozen, 0 = none frozen)."""
    if frozen_layers is None:
        base.trainable = False
        return
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= frozen_layers


def train_backbone(dataset_dir: str | Path, backbone_name: str, out_dir: str | Path, cfg: TrainConfig,
                   seed: int, class_weights: dict[str, float] | None = None) -> TrainResult:
    """Train one backbone; writes ``model.keras``, ``history.json``, ``tensorboard/``, ``report.json``."""
    import keras
    import tensorflow as tf

    start = time.time()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    backbone = get_backbone(backbone_name)
    train_path, val_path = dataset_dir / "train.tfrecord", dataset_dir / "validation.tfrecord"
    image_size = _patch_size(train_path)
    batch = cfg.batch_size or backbone.batch_size
    model, base, preprocessing = build_model(backbone, image_size, cfg)
    n_train = count_records(train_path)
    log.info("%s: %d backbone layers, %d params, input %d, batch %d, %d training patches, preprocessing %s",
             backbone_name, len(base.layers), model.count_params(), cfg.input_size or backbone.input_size, batch,
             n_train, preprocessing)
    train_ds = make_dataset(train_path, image_size, batch, True, cfg, seed)
    val_ds = make_dataset(val_path, image_size, batch, False, cfg, seed)
    steps = cfg.steps_per_epoch or None
    if steps:
        train_ds = train_ds.repeat()
    weights = {CLASS_NAMES.index(c): w for c, w in (class_weights or {}).items()} or None

    model_path = out_dir / "model.keras"
    best = keras.callbacks.ModelCheckpoint(str(model_path), monitor="val_loss", save_best_only=True, verbose=0)
    # ModelCheckpoint keeps state across fit() calls, so "best" spans all three stages
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(out_dir / "tensorboard"), write_graph=False)
    n_frozen = backbone.frozen_in_stage2 or int(round(len(base.layers) * (1 - cfg.stage2_unfreeze_fraction)))
    n_frozen = min(n_frozen, len(base.layers))
    stages = [
        ("stage1", None, cfg.stage1_lr, cfg.stage1_epochs, cfg.plateau_patience, False),
        ("stage2", n_frozen, cfg.stage2_lr, cfg.stage2_epochs, cfg.plateau_patience, False),
        ("stage3", 0, cfg.stage3_lr, cfg.stage3_max_epochs, cfg.stage3_plateau_patience, True),
    ]
    history: dict[str, dict[str, list[float]]] = {}
    epochs_done, initial_epoch = [], 0
    for name, frozen, lr, epochs, plateau, early_stop in stages:
        if epochs <= 0:
            epochs_done.append(0)
            continue
        set_trainable(base, frozen)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr),
            loss="categorical_crossentropy",
            metrics=["accuracy", keras.metrics.AUC(name="auc", multi_label=False)],
            jit_compile=cfg.jit_compile,
        )
        callbacks = [
            best, tensorboard,
            keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.1, min_delta=cfg.min_delta,
                                              patience=plateau, min_lr=cfg.min_lr, verbose=1),
            _ProgressLog(name, backbone_name),
        ]
        if early_stop:
            callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=cfg.min_delta,
                                                           patience=cfg.early_stopping_patience,
                                                           restore_best_weights=True, verbose=1))
        trainable = sum(int(tf.size(w)) for w in model.trainable_weights)
        log.info("%s %s: lr %g, %d trainable params, up to %d epochs", backbone_name, name, lr, trainable, epochs)
        h = model.fit(train_ds, validation_data=val_ds, epochs=initial_epoch + epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=steps, class_weight=weights, callbacks=callbacks, verbose=0)
        ran = len(h.history.get("loss", []))
        epochs_done.append(ran)
        initial_epoch += ran
        history[name] = {k: [float(v) for v in vals] for k, vals in h.history.items()}

    if not model_path.exists():  # no epoch ran with validation (all stage lengths 0)
        model.save(model_path)
    best_model = keras.models.load_model(model_path)
    val_loss, val_acc, val_auc = _evaluate(best_model, val_ds)
    seconds = time.time() - start
    total_epochs = sum(epochs_done)
    seen = (steps * batch if steps else n_train) * total_epochs
    result = TrainResult(
        backbone=backbone_name, model_path=str(model_path), input_size=cfg.input_size or backbone.input_size,
        batch_size=batch, preprocessing=preprocessing, weights=cfg.weights, epochs_per_stage=epochs_done,
        best_val_loss=val_loss, val_accuracy=val_acc, val_auc=val_auc, seconds=round(seconds, 1),
        train_patches=n_train, images_per_second=round(seen / seconds, 1) if seconds else 0.0,
    )
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    (out_dir / "report.json").write_text(json.dumps({"step": "train", **asdict(result)}, indent=2))
    log.info("%s trained in %.0fs: epochs %s, val loss %.4f acc %.4f auc %.4f", backbone_name, seconds,
             epochs_done, val_loss, val_acc, val_auc)
    return result


def _evaluate(model, ds) -> tuple[float, float, float]:
    import keras

    model.compile(loss="categorical_crossentropy", metrics=["accuracy", keras.metrics.AUC(name="auc")])
    res = model.evaluate(ds, verbose=0, return_dict=True)
    return float(res["loss"]), float(res["accuracy"]), float(res["auc"])


def _patch_size(path: Path) -> int:
    import tensorflow as tf

    for rec in tf.data.TFRecordDataset(str(path)).take(1):
        ex = tf.train.Example.FromString(rec.numpy())
        return int(tf.io.decode_png(ex.features.feature["image"].bytes_list.value[0]).shape[0])
    raise ValueError(f"{path} holds no records")


def _progress_callback_base():
    import keras

    return keras.callbacks.Callback


class _ProgressLog(_progress_callback_base()):
    """One log line per epoch (KFP logs and terminals both read it)."""

    def __init__(self, stage: str, backbone: str):
        super().__init__()
        self.stage, self.backbone, self.t0 = stage, backbone, time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        lr = float(self.model.optimizer.learning_rate.numpy()) if self.model and self.model.optimizer else float("nan")
        log.info("%s %s epoch %d: loss %.4f acc %.3f auc %.3f | val loss %.4f acc %.3f auc %.3f | lr %.1e | %.1fs",
                 self.backbone, self.stage, epoch + 1, logs.get("loss", float("nan")), logs.get("accuracy", float("nan")),
                 logs.get("auc", float("nan")), logs.get("val_loss", float("nan")),
                 logs.get("val_accuracy", float("nan")), logs.get("val_auc", float("nan")), lr, time.time() - self.t0)
