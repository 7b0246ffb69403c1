"""The training input pipeline (TFRecords -> uint8 batches) and the paper's augmentation."""

import numpy as np
import pytest
from train_data import TINY, tiny_dataset

from mammo.components.config import TrainConfig
from mammo.components.train.backbones import build_model, get_backbone
from mammo.components.train.inputs import AugmentedTrainer, augmentation, count_records, make_dataset, split_files


def test_dataset_reads_shards_as_uint8_and_is_deterministic_with_a_seed(tmp_path):
    tiny_dataset(tmp_path, n_per_class=6, shards=3)
    files = split_files(tmp_path, "train")
    assert len(files) == 3 and count_records(files) == 30

    def batches(seed):
        ds = make_dataset(files, 32, 8, training=True, seed=seed)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    first, again, other = batches(1), batches(1), batches(2)
    assert first[0][0].dtype == np.uint8 and first[0][0].shape == (8, 32, 32, 1) and first[0][1].shape == (8, 5)
    assert sum(len(x) for x, _ in first) == 30
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    # one-hot labels match the gray level each class was drawn with (40 * label + 0..39)
    for x, y in first:
        np.testing.assert_array_equal(x.reshape(len(x), -1).min(axis=1) // 40, y.argmax(axis=1))


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no validation.tfrecord"):
        split_files(tmp_path, "validation")


def test_augmentation_is_the_papers_and_never_changes_brightness():
    aug = augmentation(TrainConfig(), seed=0)
    kinds = [type(layer).__name__ for layer in aug.layers]
    assert kinds == ["RandomTranslation", "RandomZoom", "RandomRotation", "RandomShear", "RandomFlip"]
    assert all(getattr(layer, "fill_mode", "wrap") == "wrap" for layer in aug.layers)
    assert aug.layers[2].factor == (-0.25, 0.25)  # +-90 degrees
    assert not any("Brightness" in k or "Contrast" in k for k in kinds)


def test_augmentation_runs_in_training_only():
    net, _, _ = build_model(get_backbone("tinycnn"), 32, TINY)
    trainer = AugmentedTrainer(net, augmentation(TrainConfig(), seed=0))
    x = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 1)).astype("uint8")
    np.testing.assert_allclose(trainer.predict(x, verbose=0), net.predict(x.astype("float32"), verbose=0), rtol=1e-5)
    augmented, _ = trainer._augment_batch((x, None))
    assert augmented.dtype == "float32" and not np.allclose(np.asarray(augmented), x)
    # the augmentation is not a tracked sub-layer (so Keras keeps XLA on for the step)
    assert trainer.net is net and not any("seed_generator" in v.path for v in trainer.weights)
