"""Training: model construction per backbone and the three-stage schedule (tiny, CPU)."""

import json

import numpy as np
import pytest

from mammo.components.config import CLASS_NAMES, TrainConfig
from mammo.components.imaging import encode_png
from mammo.components.tfrecords import serialize_patch, write_records
from mammo.components.train.backbones import BACKBONES, build_model, get_backbone
from mammo.components.train.logic import augmentation, set_trainable, train_backbone

TINY = TrainConfig(backbones=["mobilenetv3small"], weights="none", input_size=32, batch_size=8, stage1_epochs=1,
                   stage2_epochs=1, stage3_max_epochs=2, bn_momentum=0.9)


def test_model_takes_raw_gray_patches_and_keeps_preprocessing_inside(tmp_path):
    import keras

    model, base, preprocessing = build_model(get_backbone("resnet50"), 48, TrainConfig(weights="none", input_size=32))
    assert model.input_shape == (None, 48, 48, 1) and model.output_shape == (None, len(CLASS_NAMES))
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["images", "resize", "gray_to_rgb", "caffe_preprocess"] and preprocessing == "caffe"
    assert model.get_layer("fc2").units == 512 and model.get_layer("dropout").rate == 0.5
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")  # built-in layers only: no custom objects
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_rescale_preprocessing_is_recorded():
    _, _, preprocessing = build_model(get_backbone("xception"), 71,
                                      TrainConfig(weights="none", input_size=71, preprocessing="rescale"))
    assert preprocessing == "rescale"


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'vgg99'"):
        get_backbone("vgg99")


def test_stage2_freezes_the_first_layers_only():
    _, base, _ = build_model(get_backbone("mobilenetv3small"), 32, TINY)
    set_trainable(base, None)
    assert not base.trainable
    set_trainable(base, 10)
    assert [layer.trainable for layer in base.layers[:10]] == [False] * 10
    assert all(layer.trainable for layer in base.layers[10:])


def test_augmentation_never_changes_brightness():
    aug = augmentation(TrainConfig(), seed=0)
    kinds = {type(layer).__name__ for layer in aug.layers}
    assert kinds == {"RandomTranslation", "RandomZoom", "RandomRotation", "RandomShear", "RandomFlip"}
    for layer in aug.layers:
        if hasattr(layer, "fill_mode"):
            assert layer.fill_mode == "wrap"


def _tiny_dataset(path, n_per_class=6, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        recs = []
        for label in range(len(CLASS_NAMES)):
            for _ in range(n_per_class):
                img = rng.integers(0, 40, (size, size), dtype=np.uint8) + np.uint8(40 * label)
                recs.append(serialize_patch(encode_png(img), label, {"patch_id": f"{split}{label}{_}"}))
        write_records(path / f"{split}.tfrecord", recs)


def test_three_stage_schedule_uses_the_configured_stage_lengths(tmp_path):
    _tiny_dataset(tmp_path)
    result = train_backbone(tmp_path, "mobilenetv3small", tmp_path / "model", TINY, seed=0)
    assert result.epochs_per_stage[:2] == [1, 1] and 1 <= result.epochs_per_stage[2] <= 2
    assert (tmp_path / "model/model.keras").exists()
    assert any((tmp_path / "model/tensorboard").rglob("*"))
    history = json.loads((tmp_path / "model/history.json").read_text())
    assert set(history) == {"stage1", "stage2", "stage3"} and "val_loss" in history["stage3"]
    report = json.loads((tmp_path / "model/report.json").read_text())
    assert report["step"] == "train" and report["backbone"] == "mobilenetv3small"
    assert 0.0 <= result.val_auc <= 1.0 and result.train_patches == 30


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "xception", "nasnetmobile", "nasnetlarge", "efficientnetb7"])
def test_paper_backbones_build_at_331_with_the_paper_layer_counts(name):
    """Heavy (NASNetLarge and EfficientNet-B7 at 331 px): run with -m slow."""
    backbone = BACKBONES[name]
    model, base, _ = build_model(backbone, 331, TrainConfig(weights="none"))
    assert model.input_shape == (None, 331, 331, 1)
    assert backbone.frozen_in_stage2 < len(base.layers)
    assert model.get_layer("fc2").units == (128 if name == "nasnetlarge" else 512)
