"""Training: registry, weights, input pipeline, augmentation and the three-stage schedule (tiny, CPU).

The schedule tests use the registry's ``tinycnn`` (four conv-BN-ReLU blocks) on 32 px patches so
that a full three-stage run takes seconds; the Keras application backbones are built and trained
for one step in the ``slow`` tests.
"""

import json
import urllib.request

import numpy as np
import pytest

from mammo.components.config import CLASS_NAMES, TrainConfig
from mammo.components.imaging import encode_png
from mammo.components.tfrecords import serialize_patch, write_records
from mammo.components.train.backbones import (
    BACKBONES,
    WeightsUnavailableError,
    build_model,
    get_backbone,
    resolve_weights,
)
from mammo.components.train.logic import (
    AugmentedTrainer,
    NonFiniteLossError,
    augmentation,
    make_dataset,
    plan_stages,
    set_trainable,
    split_files,
    train_backbone,
)

TINY = TrainConfig(backbones=["tinycnn"], weights="none", input_size=32, batch_size=8, stage1_epochs=1,
                   stage2_epochs=1, stage3_max_epochs=2, steps_per_epoch=2, bn_momentum=0.9)


def _tiny_dataset(path, n_per_class=6, size=32, shards=1):
    """train/validation TFRecords of class-dependent gray levels (``shards`` files for train)."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        recs = []
        for label in range(len(CLASS_NAMES)):
            for k in range(n_per_class):
                img = rng.integers(0, 40, (size, size), dtype=np.uint8) + np.uint8(40 * label)
                recs.append(serialize_patch(encode_png(img), label, {"patch_id": f"{split}{label}{k}"}))
        if split == "train" and shards > 1:
            for s in range(shards):
                write_records(path / f"train-{s:05d}-of-{shards:05d}.tfrecord", recs[s::shards])
        else:
            write_records(path / f"{split}.tfrecord", recs)
    return path


# -- registry and model ----------------------------------------------------------------------------


def test_registry_has_the_paper_backbones_and_modern_options():
    paper = {n for n, b in BACKBONES.items() if b.paper}
    assert paper == {"resnet50", "xception", "nasnetmobile", "nasnetlarge", "efficientnetb7"}
    assert {"efficientnetv2s", "convnexttiny"} <= set(BACKBONES)
    for b in BACKBONES.values():
        assert b.preprocessing in {"caffe", "tf", "torch", "none"} and 16 <= b.min_input_size <= b.input_size
    assert BACKBONES["xception"].min_input_size == 71 and BACKBONES["resnet50"].preprocessing == "caffe"


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


def test_rescale_preprocessing_is_recorded_and_never_applied_twice():
    _, _, preprocessing = build_model(get_backbone("xception"), 71,
                                      TrainConfig(weights="none", input_size=71, preprocessing="rescale"))
    assert preprocessing == "rescale"
    _, _, preprocessing = build_model(get_backbone("mobilenetv3small"), 32,
                                      TrainConfig(weights="none", input_size=32, preprocessing="rescale"))
    assert preprocessing == "none"  # the Keras model rescales 0..255 itself


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'vgg99'"):
        get_backbone("vgg99")


def test_input_size_below_the_backbones_minimum_is_a_clear_error():
    with pytest.raises(ValueError, match="minimum input size 71 of xception"):
        build_model(get_backbone("xception"), 64, TrainConfig(weights="none", input_size=64))


def test_mixed_precision_model_keeps_the_softmax_in_float32():
    import keras

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
        build_model(get_backbone("nasnetmobile"), 32, cfg)
    message = str(err.value)
    assert "NASNet-mobile-no-top.h5" in message and str(tmp_path / "cache") + "/models/" in message
    assert "train.weights=" in message


# -- input pipeline and augmentation -----------------------------------------------------------------


def test_dataset_reads_shards_as_uint8_and_is_deterministic_with_a_seed(tmp_path):
    _tiny_dataset(tmp_path, shards=3)
    files = split_files(tmp_path, "train")
    assert len(files) == 3

    def batches(seed):
        ds = make_dataset(files, 32, 8, training=True, seed=seed)
        return [(x.numpy(), y.numpy()) for x, y in ds]

    first, again, other = batches(1), batches(1), batches(2)
    assert first[0][0].dtype == np.uint8 and first[0][0].shape == (8, 32, 32, 1) and first[0][1].shape == (8, 5)
    assert sum(len(x) for x, _ in first) == 30
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


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


# -- schedule ----------------------------------------------------------------------------------------


def test_stage2_freezes_the_first_layers_only():
    _, base, _ = build_model(get_backbone("tinycnn"), 32, TINY)
    set_trainable(base, None)
    assert not base.trainable
    set_trainable(base, 5)
    assert [layer.trainable for layer in base.layers[:5]] == [False] * 5
    assert all(layer.trainable for layer in base.layers[5:])


def test_frozen_batchnorm_keeps_its_moving_statistics():
    net, base, _ = build_model(get_backbone("tinycnn"), 32, TINY)
    set_trainable(base, 4)  # input, block0 conv/bn/relu frozen; block1.. trainable
    frozen, trained = base.get_layer("block0_bn"), base.get_layer("block1_bn")
    before = [np.array(frozen.moving_mean), np.array(trained.moving_mean)]
    net(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32"), training=True)
    np.testing.assert_array_equal(np.array(frozen.moving_mean), before[0])
    assert not np.allclose(np.array(trained.moving_mean), before[1])


def test_paper_profile_plans_the_papers_three_stages():
    cfg = TrainConfig()
    s1, s2, s3 = plan_stages(cfg, get_backbone("resnet50"), 175)
    assert (s1.frozen_layers, s1.lr, s1.epochs, s1.early_stopping) == (None, 1e-3, 3, False)
    assert (s2.frozen_layers, s2.lr, s2.epochs) == (120, 1e-4, 10)
    assert (s3.frozen_layers, s3.lr, s3.epochs, s3.early_stopping) == (0, 1e-5, 150, True)
    assert (cfg.early_stopping_patience, cfg.min_lr) == (10, 1e-8)
    _, s2, _ = plan_stages(cfg, get_backbone("convnexttiny"), 150)
    assert s2.frozen_layers == 100  # no paper count: the last 33% unfrozen


class _Recorder:
    """Keras callback recording, at each epoch's start, the learning rate and what is trainable."""

    def __new__(cls, base_name):
        import keras

        class Recorder(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.epochs = []

            def on_epoch_begin(self, epoch, logs=None):
                base = self.model.net.get_layer(base_name)
                self.epochs.append({
                    "epoch": epoch,
                    "lr": float(self.model.optimizer.learning_rate.numpy()),
                    "iterations": int(self.model.optimizer.iterations.numpy()),
                    "base_trainable": [layer.trainable and base.trainable for layer in base.layers],
                    "head_trainable": self.model.net.get_layer("fc1").trainable,
                })

        return Recorder()


def test_schedule_sets_layers_and_rates_per_stage_and_fires_plateau_and_early_stopping(tmp_path):
    import keras

    _tiny_dataset(tmp_path / "data")
    # min_delta 10: no epoch ever "improves" after the first, so both callbacks must fire
    cfg = TrainConfig(**{**TINY.__dict__, "stage1_epochs": 3, "stage1_lr": 1e-2, "stage2_epochs": 1,
                         "stage2_lr": 1e-3, "stage3_max_epochs": 10, "stage3_lr": 1e-3, "min_delta": 10.0,
                         "plateau_patience": 1, "stage3_plateau_patience": 1, "early_stopping_patience": 2,
                         "min_lr": 5e-5})
    rec = _Recorder("tinycnn")
    result = train_backbone(tmp_path / "data", "tinycnn", tmp_path / "model", cfg, seed=0, callbacks=[rec])
    assert result.epochs_per_stage == [3, 1, 3]  # stage 3 stopped early (patience 2) instead of 10 epochs
    by_epoch = rec.epochs
    n_layers = len(by_epoch[0]["base_trainable"])
    n_frozen = plan_stages(cfg, get_backbone("tinycnn"), n_layers)[1].frozen_layers
    assert [e["base_trainable"] for e in by_epoch[:3]] == [[False] * n_layers] * 3
    assert by_epoch[3]["base_trainable"] == [False] * n_frozen + [True] * (n_layers - n_frozen)
    assert all(all(e["base_trainable"]) for e in by_epoch[4:]) and all(e["head_trainable"] for e in by_epoch)
    # each stage starts at its own rate; the plateau callback divides by 10 after patience, floor min_lr
    assert [round(e["lr"], 8) for e in by_epoch] == [1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-3, 1e-4]
    history = json.loads((tmp_path / "model/history.json").read_text())
    assert set(history) == {"stage1", "stage2", "stage3"} and history["stage3"]["epoch"] == [5, 6, 7]
    assert history["stage1"]["lr"] == pytest.approx([1e-2, 1e-2, 1e-3])
    state = json.loads((tmp_path / "model/checkpoints/state.json").read_text())
    assert state["stage_index"] == 3 and state["epochs_done"] == [3, 1, 3] and state["completed"]
    assert not (tmp_path / "model/checkpoints/last.weights.h5").exists()  # only a resume needs it
    report = json.loads((tmp_path / "model/report.json").read_text())
    for key in ("step", "backbone", "model_path", "seconds", "epochs_per_stage", "input_size", "batch_size",
                "preprocessing", "weights", "images_per_second", "val_auc", "val_accuracy", "best_val_loss"):
        assert key in report
    assert report["step"] == "train" and report["mixed_precision"] is False and report["replicas"] == 1
    assert any((tmp_path / "model/tensorboard").rglob("*.v2"))
    # the exported classifier: plain Keras file, float32 softmax, same predictions after save/load
    model = keras.models.load_model(result.model_path)
    assert model.input_shape == (None, 32, 32, 1) and model.get_layer("probabilities").dtype == "float32"
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0),
                                  keras.models.load_model(result.model_path).predict(x, verbose=0))
    assert 0.0 <= result.val_auc <= 1.0 and result.train_patches == 30


class _SimulatedPodKill(Exception):
    """Raised by a test callback to stand in for the pod dying (KFP then retries the task)."""


def test_resume_after_a_restart_continues_the_right_stage_and_epoch(tmp_path, gcs_client, gcs_bucket):
    """Checkpoints on GCS; the "pod" loses its disk between the runs, as a KFP retry would."""
    import shutil

    import keras

    _tiny_dataset(tmp_path / "data")
    cfg = TrainConfig(**{**TINY.__dict__, "stage1_epochs": 1, "stage2_epochs": 2, "stage3_max_epochs": 1,
                         "stage2_lr": 3e-4})

    class KillAtEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:  # the second epoch of stage 2
                raise _SimulatedPodKill()

    checkpoints = f"gs://{gcs_bucket}/checkpoints/run1"
    with pytest.raises(_SimulatedPodKill):
        train_backbone(tmp_path / "data", "tinycnn", tmp_path / "model", cfg, seed=0, callbacks=[KillAtEpoch()],
                       checkpoint_dir=checkpoints)
    shutil.rmtree(tmp_path / "model")  # a new pod starts with an empty disk
    blob = gcs_client.bucket(gcs_bucket).blob("checkpoints/run1/state.json")
    state = json.loads(blob.download_as_text())
    assert (state["stage_index"], state["epochs_done"], state["global_epoch"]) == (1, [1, 1, 0], 2)
    assert gcs_client.bucket(gcs_bucket).blob("checkpoints/run1/optimizer.npz").exists()

    rec = _Recorder("tinycnn")
    result = train_backbone(tmp_path / "data", "tinycnn", tmp_path / "model", cfg, seed=0, callbacks=[rec],
                            checkpoint_dir=checkpoints)
    assert result.epochs_per_stage == [1, 2, 1] and result.restarts == 1
    assert rec.epochs[0]["epoch"] == 2  # no epoch repeated, none skipped
    assert rec.epochs[0]["lr"] == pytest.approx(3e-4) and not all(rec.epochs[0]["base_trainable"])
    assert rec.epochs[0]["iterations"] == cfg.steps_per_epoch  # Adam's state came back with the checkpoint
    history = json.loads((tmp_path / "model/history.json").read_text())
    assert history["stage2"]["epoch"] == [2, 3] and history["stage3"]["epoch"] == [4]


def test_nan_loss_stops_the_run_with_a_clear_error(tmp_path):
    _tiny_dataset(tmp_path / "data")
    cfg = TrainConfig(**{**TINY.__dict__, "stage1_lr": 1e38, "stage1_epochs": 3})
    with pytest.raises(NonFiniteLossError, match="tinycnn stage1 epoch 1: loss is nan"):
        train_backbone(tmp_path / "data", "tinycnn", tmp_path / "model", cfg, seed=0)


_MIRRORED = '''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mammo.components.config import TrainConfig
from mammo.components.train.logic import Acceleration, train_backbone
cfg = TrainConfig(weights="none", input_size=32, batch_size=4, stage1_epochs=1, stage2_epochs=1,
                  stage3_max_epochs=1, steps_per_epoch=2)
accel = Acceleration(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 0, 2, False, False)
result = train_backbone(sys.argv[1], "tinycnn", sys.argv[2], cfg, seed=0, acceleration=accel)
print("RESULT", json.dumps({"global": result.global_batch_size, "replicas": result.replicas,
                            "epochs": result.epochs_per_stage}))
'''


@pytest.mark.slow
def test_two_replicas_train_with_the_batch_scaled_by_the_replica_count(tmp_path):
    """MirroredStrategy over two logical CPU devices (what several GPUs in a pod get), in a subprocess."""
    import subprocess
    import sys

    _tiny_dataset(tmp_path / "data")
    out = subprocess.run([sys.executable, "-c", _MIRRORED, str(tmp_path / "data"), str(tmp_path / "model")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    assert json.loads(line[len("RESULT "):]) == {"global": 8, "replicas": 2, "epochs": [1, 1, 1]}


# -- every registry backbone (slow) ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(BACKBONES) - {"tinycnn"}))
def test_backbone_trains_one_step_and_predicts_the_same_after_save_and_load(name, tmp_path):
    """Every registry backbone at a small size: build, one training step, save/load round trip."""
    import keras

    backbone = BACKBONES[name]
    size = max(backbone.min_input_size, 32)
    net, base, _ = build_model(backbone, size, TrainConfig(weights="none", input_size=size))
    trainer = AugmentedTrainer(net, augmentation(TrainConfig(), seed=0))
    trainer.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(0).integers(0, 255, (2, size, size, 1)).astype("uint8")
    y = np.eye(len(CLASS_NAMES), dtype="float32")[[0, 3]]
    before = [w.copy() for w in net.get_weights()]
    loss = trainer.train_on_batch(x, y)
    assert np.isfinite(loss) and any(not np.array_equal(a, b) for a, b in zip(before, net.get_weights()))
    net.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    xf = x.astype("float32")
    np.testing.assert_allclose(reloaded.predict(xf, verbose=0), net.predict(xf, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "xception", "nasnetmobile", "nasnetlarge", "efficientnetb7"])
def test_paper_backbones_build_at_331_with_the_paper_layer_counts(name):
    """Heavy (NASNetLarge and EfficientNet-B7 at 331 px): run with -m slow."""
    backbone = BACKBONES[name]
    model, base, _ = build_model(backbone, 331, TrainConfig(weights="none"))
    assert model.input_shape == (None, 331, 331, 1)
    assert backbone.frozen_in_stage2 < len(base.layers)
    assert model.get_layer("fc2").units == (128 if name == "nasnetlarge" else 512)
