"""Per-epoch checkpoints: resume after a pod restart, and the stop on a non-finite loss."""

import json
import shutil

import keras
import numpy as np
import pytest
from train_data import tiny_config, tiny_dataset

from mammo.components.contracts import (
    CHECKPOINT_LAST_WEIGHTS,
    CHECKPOINT_OPTIMIZER,
    CHECKPOINT_STATE,
    CHECKPOINTS,
    HISTORY,
)
from mammo.components.train.checkpoints import NonFiniteLossError
from mammo.components.train.logic import run


class _SimulatedPodKill(Exception):
    """Raised by a test callback to stand in for the pod dying (KFP then retries the task)."""


class Recorder(keras.callbacks.Callback):
    """Records, at each epoch's start, the learning rate, Adam's step count and what is trainable."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        base = self.model.net.get_layer("tinycnn")
        self.epochs.append({"epoch": epoch, "lr": float(self.model.optimizer.learning_rate.numpy()),
                            "iterations": int(self.model.optimizer.iterations.numpy()),
                            "base_trainable": [layer.trainable and base.trainable for layer in base.layers]})


def test_resume_after_a_restart_continues_the_right_stage_and_epoch(tmp_path, gcs_client, gcs_bucket):
    """Checkpoints on GCS; the "pod" loses its disk between the runs, as a KFP retry would."""
    tiny_dataset(tmp_path / "data")
    cfg = tiny_config(stage1_epochs=1, stage2_epochs=2, stage3_max_epochs=1, stage2_lr=3e-4, run_eagerly=True)

    class KillAtEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:  # the second epoch of stage 2
                raise _SimulatedPodKill()

    checkpoints = f"gs://{gcs_bucket}/checkpoints/run1"
    with pytest.raises(_SimulatedPodKill):
        run(tmp_path / "data", "tinycnn", tmp_path / "model", cfg, callbacks=[KillAtEpoch()],
            checkpoint_dir=checkpoints)
    shutil.rmtree(tmp_path / "model")  # a new pod starts with an empty disk
    bucket = gcs_client.bucket(gcs_bucket)
    state = json.loads(bucket.blob(f"checkpoints/run1/{CHECKPOINT_STATE}").download_as_text())
    assert (state["stage_index"], state["epochs_done"], state["global_epoch"]) == (1, [1, 1, 0], 2)
    assert bucket.blob(f"checkpoints/run1/{CHECKPOINT_OPTIMIZER}").exists()

    rec = Recorder()
    result = run(tmp_path / "data", "tinycnn", tmp_path / "model", cfg, callbacks=[rec], checkpoint_dir=checkpoints)
    assert result.epochs_per_stage == [1, 2, 1] and result.restarts == 1
    assert rec.epochs[0]["epoch"] == 2  # no epoch repeated, none skipped
    assert rec.epochs[0]["lr"] == pytest.approx(3e-4) and not all(rec.epochs[0]["base_trainable"])
    assert rec.epochs[0]["iterations"] == cfg.train.steps_per_epoch  # Adam's state came back with the checkpoint
    history = json.loads((tmp_path / "model" / HISTORY).read_text())
    assert history["stage2"]["epoch"] == [2, 3] and history["stage3"]["epoch"] == [4]
    # completed: the weight files a resume needs are gone from the bucket, the state says so
    assert not bucket.blob(f"checkpoints/run1/{CHECKPOINT_LAST_WEIGHTS}").exists()
    assert json.loads(bucket.blob(f"checkpoints/run1/{CHECKPOINT_STATE}").download_as_text())["completed"]


def test_nan_loss_in_the_first_epoch_says_nothing_was_checkpointed(tmp_path):
    tiny_dataset(tmp_path / "data")
    cfg = tiny_config(stage1_lr=1e38, stage1_epochs=3, run_eagerly=True)
    with pytest.raises(NonFiniteLossError, match="tinycnn stage1 epoch 1: (val_)?loss is nan") as err:
        run(tmp_path / "data", "tinycnn", tmp_path / "model", cfg)
    checkpoints = tmp_path / "model" / CHECKPOINTS
    assert "nothing was checkpointed" in str(err.value) and str(checkpoints) in str(err.value)
    assert not any(checkpoints.iterdir())  # what the message says: the folder is empty


def test_nan_loss_after_finite_epochs_names_the_checkpointed_epoch_and_it_is_there(tmp_path):
    tiny_dataset(tmp_path / "data")
    cfg = tiny_config(stage1_epochs=2, stage2_epochs=2, stage2_lr=1e38, run_eagerly=True)
    with pytest.raises(NonFiniteLossError, match="tinycnn stage2 epoch 3: (val_)?loss is nan") as err:
        run(tmp_path / "data", "tinycnn", tmp_path / "model", cfg)
    checkpoints = tmp_path / "model" / CHECKPOINTS
    assert f"The last finite epoch (epoch 2, stage1 epoch 2) is checkpointed in {checkpoints}" in str(err.value)
    state = json.loads((checkpoints / CHECKPOINT_STATE).read_text())
    assert (state["global_epoch"], state["epochs_done"], state["stage_index"]) == (2, [2, 0, 0], 1)
    assert np.isfinite(state["history"]["stage1"]["loss"]).all()
    # the saved weights are those of that finite epoch: they load into the classifier and are finite
    from mammo.components.train.backbones import build_model, get_backbone

    net, _, _ = build_model(get_backbone("tinycnn"), 32, cfg.train)
    net.load_weights(str(checkpoints / CHECKPOINT_LAST_WEIGHTS))
    assert all(np.isfinite(w).all() for w in net.get_weights())
