"""Grad-CAM: the saliency of a model whose response is localised peaks on the lesion."""

import numpy as np
import pytest

from mammo.components.config import CLASS_NAMES
from mammo.components.explain.gradcam import gradcam, gradcam_gallery, pick_examples, target_layer

LESION = (slice(20, 28), slice(36, 44))  # rows, columns of the bright lesion in a 64 px patch


def lesion_detector():
    """The training step's shape (gray_to_rgb, a nested convolutional backbone, GAP, dense head) with
    weights set so that only bright blobs raise the mass_malignant score: its response is localised."""
    import keras

    keras.utils.set_random_seed(0)
    inner = keras.Input((64, 64, 3))
    f = keras.layers.Conv2D(2, 5, padding="same", activation="relu", name="blob")(inner)
    f = keras.layers.MaxPooling2D(4)(f)
    base = keras.Model(inner, f, name="backbone")
    images = keras.Input((64, 64, 1), name="images")
    x = keras.layers.Concatenate(name="gray_to_rgb")([images, images, images])
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(len(CLASS_NAMES), activation="softmax", name="probabilities")(x)
    model = keras.Model(images, out)
    kernel = np.zeros((5, 5, 3, 2), np.float32)
    kernel[:, :, :, 0] = 1.0 / 75  # channel 0: local mean brightness
    kernel[:, :, :, 1] = -1.0 / 75  # channel 1: local darkness
    base.get_layer("blob").set_weights([kernel, np.array([-0.5, 0.5], np.float32)])  # fires above mid-gray
    dense = np.zeros((2, len(CLASS_NAMES)), np.float32)
    dense[0, CLASS_NAMES.index("mass_malignant")] = 300.0
    dense[1, CLASS_NAMES.index("normal")] = 1.0
    model.get_layer("probabilities").set_weights([dense, np.zeros(len(CLASS_NAMES), np.float32)])
    return model


def synthetic_patch(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(70, 15, (64, 64)).clip(0, 255)  # textured, darker tissue
    img[LESION] = 230  # the lesion
    return img.astype(np.uint8)[..., None]


def test_saliency_peaks_on_the_lesion(tmp_path):
    import keras

    model = lesion_detector()
    model.save(tmp_path / "m.keras")  # as the evaluate step sees it: loaded back from the train output
    model = keras.models.load_model(tmp_path / "m.keras")
    assert target_layer(model).name == "backbone"  # the nested backbone's output is the target
    patches = np.stack([synthetic_patch(s) for s in range(3)])
    maps, probs = gradcam(model, patches)
    assert (probs.argmax(axis=1) == CLASS_NAMES.index("mass_malignant")).all()
    assert maps.shape == (3, 64, 64) and maps.max() == pytest.approx(1.0) and maps.min() >= 0
    for m in maps:
        peak = np.unravel_index(m.argmax(), m.shape)
        assert 16 <= peak[0] < 32 and 32 <= peak[1] < 48  # the lesion, within the 4-pixel feature grid
        inside = np.zeros_like(m, bool)
        inside[LESION] = True
        assert m[inside].mean() > 4 * m[~inside].mean()
    # the same patch without the lesion: nothing speaks for mass_malignant anywhere
    blank = patches.copy()
    blank[:, LESION[0], LESION[1]] = 70
    maps, _ = gradcam(model, blank, class_index=CLASS_NAMES.index("mass_malignant"))
    assert maps.max() == 0.0


def test_gallery_takes_correct_and_wrong_patches_per_class():
    y = np.array([3, 3, 3, 4, 4])
    probs = np.eye(5)[[3, 3, 4, 4, 3]] * 0.9 + 0.02
    picked = pick_examples(y, probs, per_class=1, seed=0)
    assert len(picked) == 4 and 2 in picked and 4 in picked  # MM right + wrong, N right + wrong
    model = lesion_detector()
    patches = np.stack([synthetic_patch(s) for s in range(5)])
    gallery = gradcam_gallery(model, patches, y, probs, [f"p{i}" for i in range(5)], per_class=1)
    assert {(g["true"], g["correct"]) for g in gallery} == {("mass_malignant", True), ("mass_malignant", False),
                                                             ("normal", True), ("normal", False)}
    assert all(g["png"].startswith(b"\x89PNG") for g in gallery)
    assert gradcam_gallery(model, patches, y, probs, ["x"] * 5, per_class=0) == []
