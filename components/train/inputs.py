"""The training input pipeline: the balanced dataset's TFRecords as batches, and the augmentation.

:func:`make_dataset` reads a split's TFRecord files in parallel, decodes the PNG patches with the
one record parser (:func:`mammo.components.tfrecords.parse_fn`) into uint8, caches them, shuffles
with the seed, batches and prefetches; only TensorFlow ops run per example.
:func:`augmentation` is the paper's augmentation as Keras preprocessing layers;
:class:`AugmentedTrainer` applies it on the accelerator to each training batch, outside the
XLA-compiled step (Keras' image transforms have no XLA kernels). Validation and the exported model
never augment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import tensorflow as tf

from mammo.components.config import CLASS_NAMES, TrainConfig
from mammo.components.contracts import split_records, split_shards_glob
from mammo.components.tfrecords import parse_example, parse_fn


def split_files(dataset_dir: str | Path, split: str) -> list[str]:
    """The TFRecord files of one split of a balanced dataset: the split's file and/or its shards."""
    d = Path(dataset_dir)
    files = sorted(str(p) for p in d.glob(split_records(split)))
    files += sorted(str(p) for p in d.glob(split_shards_glob(split)))
    if not files:
        raise FileNotFoundError(f"{d}: no {split_records(split)} or {split_shards_glob(split)} "
                                "(is it the balance_split step's output?)")
    return files


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
    ds = ds.map(parse_fn(image_size, dtype=tf.uint8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
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
    """Records in one or more TFRecord files."""
    if isinstance(files, (str, Path)):
        files = [files]
    return int(tf.data.TFRecordDataset([str(f) for f in files]).reduce(0, lambda n, _: n + 1).numpy())


def patch_size(files: Sequence[str | Path]) -> int:
    """The side of the stored patches (read from the first record)."""
    for rec in tf.data.TFRecordDataset([str(f) for f in files]).take(1):
        return int(tf.io.decode_png(parse_example(rec.numpy())["image"]).shape[0])
    raise ValueError(f"{files[0]} holds no records")


def augmentation(cfg: TrainConfig, seed: int) -> keras.Sequential:
    """The paper's augmentation (its notebooks' ``ImageDataGenerator``) as Keras preprocessing layers.

    Shift and zoom are fractions of the side, rotation up to +-``rotation_degrees``, both flips,
    ``fill_mode`` (the notebooks' ``wrap``); no brightness change (intensity is diagnostic).
    ``shear`` is the generator's ``shear_range``, an angle in degrees, applied as the shear factor
    ``tan(angle)``. The layers compute in float32 even under mixed precision.
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
        # eager steps (``train.run_eagerly``) augment eagerly too: nothing to trace
        augment = self._augment_batch if self.run_eagerly else tf.function(self._augment_batch, reduce_retracing=True)

        def train_function(iterator):
            # StopIteration / OutOfRangeError end the epoch (Keras catches both)
            data = iterator[0] if isinstance(iterator, (list, tuple)) else next(iterator)
            return step([strategy.run(augment, args=(data,))])

        self.train_function = train_function
        return train_function


__all__ = ["AugmentedTrainer", "augmentation", "count_records", "make_dataset", "patch_size", "split_files"]
