"""The backbone registry, keras:<Application> backbones with arguments, weights and the classifier."""

import urllib.request

import keras
import numpy as np
import pytest
from train_data import TINY

from mammo.components.config import CLASS_NAMES, TrainConfig, load_config
from mammo.components.train.backbones import (
    BACKBONES,
    WeightsUnavailableError,
    build_model,
    get_backbone,
    preprocessing_layer,
    resolve_weights,
    resolved_preprocessing,
)


def test_registry_has_the_paper_backbones_and_modern_options():
    paper = {n for n, b in BACKBONES.items() if b.paper}
    assert paper == {"resnet50", "xception", "nasnetmobile", "nasnetlarge", "efficientnetb7"}
    assert {"efficientnetv2s", "convnexttiny", "mobilenet025"} <= set(BACKBONES)
    for b in BACKBONES.values():
        assert b.preprocessing in {"caffe", "tf", "torch", "none"} and 16 <= b.min_input_size <= b.input_size
    assert BACKBONES["xception"].min_input_size == 71 and BACKBONES["resnet50"].preprocessing == "caffe"
    m = BACKBONES["mobilenet025"]
    assert (m.keras_name, m.kwargs, m.input_size, m.preprocessing) == ("MobileNet", {"alpha": 0.25}, 224, "tf")


def test_model_takes_raw_gray_patches_and_keeps_preprocessing_inside(tmp_path):
    model, _, preprocessing = build_model(get_backbone("mobilenet025"), 48, TrainConfig(weights="none", input_size=32))
    assert model.input_shape == (None, 48, 48, 1) and model.output_shape == (None, len(CLASS_NAMES))
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["images", "resize", "gray_to_rgb", "tf_preprocess"] and preprocessing == "tf"
    assert model.get_layer("fc2").units == 512 and model.get_layer("dropout").rate == 0.5
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")  # built-in layers only: no custom objects
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_each_preprocessing_maps_0_255_to_what_its_backbone_expects():
    x = np.array([[[[0.0, 127.5, 255.0]]]], "float32")
    out = {k: np.asarray(preprocessing_layer(k)(x))[0, 0, 0] for k in ("caffe", "tf", "torch", "rescale", "none")}
    np.testing.assert_allclose(out["caffe"], [0 - 103.939, 127.5 - 116.779, 255 - 123.68], rtol=1e-5)
    np.testing.assert_allclose(out["tf"], [-1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(out["torch"], [-0.485 / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-4)
    np.testing.assert_allclose(out["rescale"], [0, 0.5, 1], atol=1e-6)
    np.testing.assert_array_equal(out["none"], x[0, 0, 0])
    assert resolved_preprocessing(get_backbone("resnet50"), TrainConfig()) == "caffe"


def test_rescale_preprocessing_is_recorded_and_never_applied_twice():
    rescale = TrainConfig(weights="none", input_size=32, preprocessing="rescale")
    assert resolved_preprocessing(get_backbone("xception"), rescale) == "rescale"
    _, _, preprocessing = build_model(get_backbone("mobilenetv3small"), 32, rescale)
    assert preprocessing == "none"  # the Keras model rescales 0..255 itself


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'vgg99'"):
        get_backbone("vgg99")
    with pytest.raises(ValueError, match="keras.applications has no model 'VGG99'"):
        get_backbone("keras:VGG99")
    with pytest.raises(ValueError, match=r"train.backbones entry 'resnet5' is neither a registry name"):
        load_config("demo", overrides=["train.backbones=resnet5"])


def test_input_size_below_the_backbones_minimum_is_a_clear_error():
    with pytest.raises(ValueError, match="minimum input size 71 of xception"):
        build_model(get_backbone("xception"), 64, TrainConfig(weights="none", input_size=64))


def test_any_keras_application_plugs_in_with_arguments_from_the_config():
    cfg = load_config("demo", overrides=["train.backbones=keras:MobileNet,keras:DenseNet121",
                                         "train.backbone_kwargs=MobileNet.alpha=0.5,MobileNet.depth_multiplier=1",
                                         "train.input_size=32"]).train
    mobilenet = get_backbone("keras:MobileNet", cfg)
    assert (mobilenet.keras_name, mobilenet.kwargs, mobilenet.preprocessing) == ("MobileNet", {
        "alpha": 0.5, "depth_multiplier": 1}, "tf")
    assert get_backbone("keras:DenseNet121", cfg).preprocessing == "torch"  # the scoped arguments are MobileNet's
    model, base, _ = build_model(mobilenet, 32, cfg)
    assert base.get_layer("conv1").filters == 16  # 32 filters at alpha 1, so alpha=0.5 reached Keras
    assert model.name == "mammo_keras_MobileNet" and model.output_shape == (None, len(CLASS_NAMES))
    # a module that rescales itself unless told not to: include_preprocessing=False -> its own mapping
    v3 = load_config("demo", overrides=["train.backbones=keras:MobileNetV3Small",
                                        "train.backbone_kwargs=include_preprocessing=False"]).train
    assert get_backbone("keras:MobileNetV3Small", v3).preprocessing == "tf"


@pytest.mark.parametrize("overrides, message", [
    (["train.backbones=keras:MobileNet", "train.backbone_kwargs=alpha"], "entry 'alpha' is malformed"),
    (["train.backbones=keras:MobileNet", "train.backbone_kwargs=weights=None"], "weights is set by the registry"),
    (["train.backbones=keras:MobileNet", "train.backbone_kwargs=Xception.alpha=1"], "needs keras:Xception"),
    (["train.backbone_kwargs=alpha=0.5"], "applies to no backbone"),
    (["train.backbones=keras:"], "neither a registry name"),
])
def test_malformed_backbone_settings_fail_at_config_load_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        load_config("demo", overrides=overrides)
    assert "train.backbone" in str(err.value)


def test_mixed_precision_model_keeps_the_softmax_in_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, _, _ = build_model(get_backbone("tinycnn"), 32, TINY)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("fc1").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    out = model(np.zeros((1, 32, 32, 1), "float32"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


# -- weights ---------------------------------------------------------------------------------------


def test_weights_file_local_and_on_gcs_load_into_the_backbone(tmp_path, gcs_client, gcs_bucket):
    model, base, _ = build_model(get_backbone("tinycnn"), 32, TINY)
    file = tmp_path / "tiny.weights.h5"
    base.save_weights(str(file))
    gcs_client.bucket(gcs_bucket).blob("weights/tiny.weights.h5").upload_from_filename(str(file))
    for spec in (str(file), f"gs://{gcs_bucket}/weights/tiny.weights.h5"):
        cfg = TrainConfig(weights=spec, input_size=32, weights_cache_dir=str(tmp_path / "cache"))
        _, loaded, _ = build_model(get_backbone("tinycnn"), 32, cfg)
        for a, b in zip(base.get_weights(), loaded.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert (tmp_path / "cache/gcs" / gcs_bucket / "weights/tiny.weights.h5").exists()


def test_missing_weights_file_is_a_clear_error(tmp_path, gcs_server, gcs_bucket):
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        resolve_weights(str(tmp_path / "nope.h5"))
    with pytest.raises(WeightsUnavailableError, match=f"gs://{gcs_bucket}/nope.h5"):
        resolve_weights(f"gs://{gcs_bucket}/nope.h5", tmp_path)


def test_imagenet_without_network_says_how_to_provide_the_file(tmp_path, monkeypatch):
    # no network: every HTTP(S) request goes to a closed local port
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)
    cfg = TrainConfig(weights="imagenet", input_size=32, weights_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(WeightsUnavailableError) as err:
        build_model(get_backbone("mobilenet025"), 32, cfg)
    message = str(err.value)
    assert "mobilenet_2_5_224_tf_no_top.h5" in message and str(tmp_path / "cache") + "/models/" in message
    assert "train.weights=" in message
