"""Training: the three-stage schedule, the step's entry point, and real ImageNet transfer learning.

The schedule tests use the registry's ``tinycnn`` (four conv-BN-ReLU blocks) on 32 px patches so
that a full three-stage run takes seconds; ``mobilenet025`` trains from the shared ImageNet file;
the other Keras application backbones are built and trained for one step in the ``slow`` tests.
"""

import hashlib
import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from train_data import TINY, tiny_config, tiny_dataset

from mammo.components.config import CLASS_NAMES, TrainConfig
from mammo.components.contracts import (
    CHECKPOINT_LAST_WEIGHTS,
    CHECKPOINT_STATE,
    CHECKPOINTS,
    HISTORY,
    MODEL_KERAS,
    REPORT_JSON,
    TENSORBOARD,
)
from mammo.components.train.backbones import BACKBONES, PAPER_FROZEN_FRACTION, build_model, get_backbone
from mammo.components.train.inputs import AugmentedTrainer, augmentation
from mammo.components.train.logic import plan_stages, run, set_trainable
from mammo.pipelines.cli import main as cli_main

MOBILENET_FILE = "mobilenet_2_5_224_tf_no_top.h5"


def _shared_dir() -> Path:
    """``../shared`` beside the checkout, else the workspace copy (as the real-CSV fixture finds it)."""
    candidates = [Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        pytest.skip(f"the shared folder is absent ({' and '.join(map(str, candidates))}): no ImageNet weights file")
    return found


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
    _, s2, _ = plan_stages(cfg, get_backbone("mobilenet025"), 86)
    assert s2.frozen_layers == round(86 * PAPER_FROZEN_FRACTION) == 58  # the paper's share kept frozen


def _base(trainer) -> keras.Model:
    return next(layer for layer in trainer.net.layers if isinstance(layer, keras.Model))


class StageProbe(keras.callbacks.Callback):
    """Per fit (= stage): what is trainable and the backbone's weights at its start and end; per
    epoch: the learning rate."""

    def __init__(self):
        super().__init__()
        self.stages, self.lrs = [], []

    def on_train_begin(self, logs=None):
        base = _base(self.model)
        self.stages.append({"trainable": [layer.trainable and base.trainable for layer in base.layers],
                            "head_trainable": self.model.net.get_layer("fc1").trainable,
                            "start": {layer.name: layer.get_weights() for layer in base.layers}})

    def on_train_end(self, logs=None):
        self.stages[-1]["end"] = {layer.name: layer.get_weights() for layer in _base(self.model).layers}

    def on_epoch_begin(self, epoch, logs=None):
        self.lrs.append(float(self.model.optimizer.learning_rate.numpy()))


def test_schedule_sets_layers_and_rates_per_stage_and_fires_plateau_and_early_stopping(tmp_path):
    tiny_dataset(tmp_path / "data")
    # min_delta 10: no epoch ever "improves" after the first, so both callbacks must fire
    cfg = tiny_config(stage1_epochs=3, stage1_lr=1e-2, stage2_epochs=1, stage2_lr=1e-3, stage3_max_epochs=10,
                      stage3_lr=1e-3, min_delta=10.0, plateau_patience=1, stage3_plateau_patience=1,
                      early_stopping_patience=2, min_lr=5e-5, run_eagerly=True)  # graph steps: the CLI test
    probe = StageProbe()
    result = run(tmp_path / "data", "tinycnn", tmp_path / "model", cfg, callbacks=[probe])
    assert result.epochs_per_stage == [3, 1, 3]  # stage 3 stopped early (patience 2) instead of 10 epochs
    n_layers = len(probe.stages[0]["trainable"])
    n_frozen = plan_stages(cfg.train, get_backbone("tinycnn"), n_layers)[1].frozen_layers
    assert [s["trainable"] for s in probe.stages] == [
        [False] * n_layers, [False] * n_frozen + [True] * (n_layers - n_frozen), [True] * n_layers]
    assert all(s["head_trainable"] for s in probe.stages)
    assert result.trainable_layers_per_stage == [0, n_layers - n_frozen, n_layers]
    # each stage starts at its own rate; the plateau callback divides by 10 after patience, floor min_lr
    assert [round(lr, 8) for lr in probe.lrs] == [1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-3, 1e-4]
    model_dir = tmp_path / "model"
    history = json.loads((model_dir / HISTORY).read_text())
    assert set(history) == {"stage1", "stage2", "stage3"} and history["stage3"]["epoch"] == [5, 6, 7]
    assert history["stage1"]["lr"] == pytest.approx([1e-2, 1e-2, 1e-3])
    state = json.loads((model_dir / CHECKPOINTS / CHECKPOINT_STATE).read_text())
    assert state["stage_index"] == 3 and state["epochs_done"] == [3, 1, 3] and state["completed"]
    assert not (model_dir / CHECKPOINTS / CHECKPOINT_LAST_WEIGHTS).exists()  # only a resume needs it
    report = json.loads((model_dir / REPORT_JSON).read_text())
    for key in ("step", "backbone", "model_path", "seconds", "epochs_per_stage", "input_size", "batch_size",
                "preprocessing", "weights", "images_per_second", "val_auc", "val_accuracy", "best_val_loss",
                "class_weights", "trainable_layers_per_stage"):
        assert key in report
    assert report["step"] == "train" and report["mixed_precision"] is False and report["replicas"] == 1
    assert report["class_weights"] == {}  # the balance report of this dataset has none
    assert any((model_dir / TENSORBOARD).rglob("*.v2"))
    # the exported classifier: plain Keras file, float32 softmax, same predictions after save/load
    model = keras.models.load_model(result.model_path)
    assert result.model_path == str(model_dir / MODEL_KERAS)
    assert model.input_shape == (None, 32, 32, 1) and model.get_layer("probabilities").dtype == "float32"
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0),
                                  keras.models.load_model(result.model_path).predict(x, verbose=0))
    assert 0.0 <= result.val_auc <= 1.0 and result.train_patches == 20


def test_mammo_train_applies_the_class_weights_of_the_balanced_dataset(tmp_path, capsys):
    """The CLI and the KFP component call the same entry point, which reads the balance report's weights
    (in graph mode, as in production: the other schedule tests step eagerly).

    With every class weighted 0 the weighted training loss is exactly 0, so the history proves the
    weights reached the loss (validation is never weighted)."""
    zero = dict.fromkeys(CLASS_NAMES, 0.0)
    tiny_dataset(tmp_path / "data", class_weights=zero)
    sets = [f"train.{k}={v}" for k, v in TINY.__dict__.items() if k in (
        "backbones", "weights", "input_size", "batch_size", "steps_per_epoch", "stage1_epochs", "stage2_epochs",
        "stage3_max_epochs")]
    args = ["train", "--dataset", str(tmp_path / "data"), "--backbone", "tinycnn", "--out", str(tmp_path / "model"),
            "--profile", "demo"]
    for s in sets:
        args += ["--set", s.replace("['tinycnn']", "tinycnn")]
    assert cli_main(args) == 0
    report = json.loads((tmp_path / "model" / REPORT_JSON).read_text())
    assert report["class_weights"] == zero
    history = json.loads((tmp_path / "model" / HISTORY).read_text())
    assert [history[s]["loss"] for s in ("stage1", "stage2", "stage3")] == [[0.0]] * 3
    assert history["stage1"]["val_loss"][0] > 0.1


def test_a_class_the_balance_report_gives_no_weight_counts_with_weight_one(tmp_path):
    """The balance step weighs only the classes present in train; Keras needs every class index."""
    four = {c: 0.0 for c in CLASS_NAMES if c != "normal"}
    tiny_dataset(tmp_path / "data", class_weights=four)
    cfg = tiny_config(stage2_epochs=0, stage3_max_epochs=0, steps_per_epoch=4, batch_size=5, run_eagerly=True)
    result = run(tmp_path / "data", "tinycnn", tmp_path / "model", cfg)
    assert result.class_weights == four and result.epochs_per_stage == [1, 0, 0]
    assert json.loads((tmp_path / "model" / HISTORY).read_text())["stage1"]["loss"][0] > 0  # normal's patches


def test_class_weights_naming_an_unknown_class_are_a_clear_error(tmp_path):
    tiny_dataset(tmp_path / "data", class_weights={"calc_bengin": 1.0})
    with pytest.raises(ValueError, match=r"unknown classes \['calc_bengin'\]"):
        run(tmp_path / "data", "tinycnn", tmp_path / "model", tiny_config())


# -- real ImageNet transfer learning ------------------------------------------------------------------


def _h5_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """{layer name: weights} of a Keras HDF5 weights file, read with h5py (not through Keras)."""
    out = {}
    with h5py.File(path, "r") as f:
        for raw in f.attrs["layer_names"]:
            group = f[raw.decode() if isinstance(raw, bytes) else str(raw)]
            names = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs["weight_names"]]
            if names:
                out[group.name.strip("/")] = [np.asarray(group[w]) for w in names]
    return out


def _equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_mobilenet025_trains_from_the_shared_imagenet_weights_with_the_papers_stage_freezing(tmp_path):
    weights_dir = _shared_dir() / "weights"
    file = weights_dir / MOBILENET_FILE
    assert file.is_file(), f"{file} is missing from the shared folder"
    sums = dict(line.split()[::-1] for line in (weights_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert hashlib.sha256(file.read_bytes()).hexdigest() == sums[MOBILENET_FILE]
    imagenet = _h5_weights(file)
    assert len(imagenet) > 50

    tiny_dataset(tmp_path / "data", n_per_class=2)
    # eager steps: one step per stage needs no graph (tracing MobileNet's three train steps dominates)
    cfg = tiny_config(backbones=["mobilenet025"], weights=str(file), bn_momentum=0.0, stage3_lr=1e-3,
                      run_eagerly=True)
    probe = StageProbe()
    result = run(tmp_path / "data", "mobilenet025", tmp_path / "model", cfg, callbacks=[probe])
    assert result.epochs_per_stage == [1, 1, 1] and result.weights == str(file)

    stage1, stage2, stage3 = probe.stages
    # the ImageNet weights were loaded: every backbone layer equals the file before training
    assert set(imagenet) <= set(stage1["start"])
    assert all(_equal(stage1["start"][name], w) for name, w in imagenet.items())
    random_init, _, _ = build_model(get_backbone("mobilenet025"), 32, TrainConfig(weights="none", input_size=32))
    assert not _equal(random_init.get_layer("mobilenet_0.25_32").get_layer("conv1").get_weights(), imagenet["conv1"])
    # stage 1: backbone frozen (BatchNorm statistics included), so it still equals the file
    n = len(stage1["trainable"])
    assert stage1["trainable"] == [False] * n
    assert all(_equal(stage1["end"][name], w) for name, w in imagenet.items())
    # stage 2: the paper's share frozen; those layers keep the file's weights, the rest trained
    n_frozen = round(n * PAPER_FROZEN_FRACTION)
    assert stage2["trainable"] == [False] * n_frozen + [True] * (n - n_frozen)
    layer_names = list(stage1["start"])
    frozen, unfrozen = set(layer_names[:n_frozen]), set(layer_names[n_frozen:])
    assert all(_equal(stage2["end"][name], w) for name, w in imagenet.items() if name in frozen)
    assert any(not _equal(stage2["end"][name], w) for name, w in imagenet.items() if name in unfrozen)
    # stage 3: everything trains, the first layers too
    assert stage3["trainable"] == [True] * n
    assert not _equal(stage3["end"]["conv1"], imagenet["conv1"])
    assert result.trainable_layers_per_stage == [0, n - n_frozen, n]


# -- slow ------------------------------------------------------------------------------------------------

_MIRRORED = '''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mammo.components.config import TrainConfig, demo_config
from mammo.components.train.logic import Acceleration, run
cfg = demo_config()
cfg.train = TrainConfig(weights="none", input_size=32, batch_size=4, stage1_epochs=1, stage2_epochs=1,
                        stage3_max_epochs=1, steps_per_epoch=2)
accel = Acceleration(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 0, 2, False, False)
result = run(sys.argv[1], "tinycnn", sys.argv[2], cfg, acceleration=accel)
print("RESULT", json.dumps({"global": result.global_batch_size, "replicas": result.replicas,
                            "epochs": result.epochs_per_stage}))
'''


@pytest.mark.slow
def test_two_replicas_train_with_the_batch_scaled_by_the_replica_count(tmp_path):
    """MirroredStrategy over two logical CPU devices (what several GPUs in a pod get), in a subprocess."""
    import subprocess
    import sys

    tiny_dataset(tmp_path / "data", n_per_class=6)
    out = subprocess.run([sys.executable, "-c", _MIRRORED, str(tmp_path / "data"), str(tmp_path / "model")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    assert json.loads(line[len("RESULT "):]) == {"global": 8, "replicas": 2, "epochs": [1, 1, 1]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(BACKBONES) - {"tinycnn"}))
def test_backbone_trains_one_step_and_predicts_the_same_after_save_and_load(name, tmp_path):
    """Every registry backbone at a small size: build, one training step, save/load round trip."""
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
