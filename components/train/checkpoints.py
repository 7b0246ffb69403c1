"""Per-epoch checkpoints, resume after a restart, and the stop on a non-finite loss.

After every epoch :class:`EpochCheckpoint` writes the classifier's weights, the optimizer's
variables, the callbacks' counters and the history into the checkpoint folder
(:class:`CheckpointStore`, local or ``gs://``); ``state.json`` (:class:`TrainingState`) is written
last, so it only ever names complete files. A restarted task (a KFP retry) reads the state back and
continues at the stage and epoch where it stopped. :class:`NaNGuard` stops the run with
:class:`NonFiniteLossError` before a non-finite epoch is checkpointed, and says what the folder
really holds.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from mammo.components import storage
from mammo.components.contracts import (
    CHECKPOINT_BEST_WEIGHTS,
    CHECKPOINT_EARLY_STOPPING,
    CHECKPOINT_LAST_WEIGHTS,
    CHECKPOINT_OPTIMIZER,
    CHECKPOINT_STATE,
)

log = logging.getLogger(__name__)

STAGE_NAMES = ("stage1", "stage2", "stage3")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped."""


@dataclass
class TrainingState:
    """Where a training stands; ``state.json`` in the checkpoint folder, written after each epoch."""

    backbone: str
    #: the stage in progress, or the next one when the previous finished
    stage_index: int = 0
    epochs_done: list[int] = field(default_factory=lambda: [0, 0, 0])
    #: epochs completed over all stages (Keras' index of the next epoch)
    global_epoch: int = 0
    best_val_loss: float | None = None
    best_epoch: int = -1
    #: learning rate of the stage in progress (after plateau reductions)
    lr: float | None = None
    plateau: dict[str, Any] = field(default_factory=dict)
    early_stopping: dict[str, Any] = field(default_factory=dict)
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: float = 0.0
    fit_seconds: float = 0.0
    images_seen: int = 0
    restarts: int = 0
    #: the training finished and exported its model (a new training in this folder starts afresh)
    completed: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class CheckpointStore:
    """The checkpoint folder: local (a path, e.g. a mounted volume) or ``gs://`` (mirrored from a scratch folder).

    Files: the classifier's weights after the last epoch (``CHECKPOINT_LAST_WEIGHTS``), the
    optimizer's variables, the weights with the best validation loss so far, stage 3's early-stopping
    best weights, and ``CHECKPOINT_STATE`` (:class:`TrainingState`, written last).
    """

    #: files only a resumed training needs; removed when the training completes
    RESUME_FILES = (CHECKPOINT_LAST_WEIGHTS, CHECKPOINT_OPTIMIZER, CHECKPOINT_EARLY_STOPPING, CHECKPOINT_BEST_WEIGHTS)

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.remote = storage.is_gcs(self.location)
        self.dir = Path(tempfile.mkdtemp(prefix="mammo-checkpoints-")) if self.remote else Path(self.location)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    def load_state(self) -> TrainingState | None:
        """The saved state (fetching the folder from GCS first), or None for a fresh start."""
        if self.remote:
            for entry in storage.list_files(self.location):
                storage.download_file(entry.uri, self.dir / entry.rel)
        state_file = self.dir / CHECKPOINT_STATE
        if not state_file.exists():
            return None
        return TrainingState.from_dict(json.loads(state_file.read_text()))

    def save_state(self, state: TrainingState, changed: Sequence[str]) -> None:
        tmp = self.dir / f"tmp-{CHECKPOINT_STATE}"
        tmp.write_text(json.dumps(asdict(state), indent=1))
        tmp.replace(self.dir / CHECKPOINT_STATE)
        if self.remote:
            for name in [*changed, CHECKPOINT_STATE]:
                storage.upload_file(self.dir / name, storage.join(self.location, name))

    def finish(self, state: TrainingState) -> None:
        """Mark the training completed and drop the weight files (the exported model holds the result)."""
        state.completed = True
        self.save_state(state, [])
        for name in self.RESUME_FILES:
            (self.dir / name).unlink(missing_ok=True)
            if self.remote:
                storage.delete(storage.join(self.location, name))
        if self.remote:
            shutil.rmtree(self.dir, ignore_errors=True)

    def save_weights(self, net: keras.Model, name: str) -> None:
        tmp = self.dir / f"tmp-{name}"
        net.save_weights(str(tmp))
        tmp.replace(self.dir / name)

    def copy(self, source: str, name: str) -> None:
        tmp = self.dir / f"tmp-{name}"
        shutil.copyfile(self.dir / source, tmp)
        tmp.replace(self.dir / name)

    def save_arrays(self, arrays: Sequence[np.ndarray], name: str) -> None:
        tmp = self.dir / f"tmp-{name}"
        with open(tmp, "wb") as fh:
            np.savez(fh, *arrays)
        tmp.replace(self.dir / name)

    def load_arrays(self, name: str) -> list[np.ndarray] | None:
        path = self.dir / name
        if not path.exists():
            return None
        with np.load(path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]


def optimizer_arrays(optimizer) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in optimizer.variables]


def restore_optimizer(optimizer, trainable_variables, arrays: list[np.ndarray]) -> bool:
    """Put saved optimizer variables back; False (fresh optimizer) when they do not fit this stage."""
    if not optimizer.built:
        optimizer.build(trainable_variables)
    variables = optimizer.variables
    if len(variables) != len(arrays) or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays)):
        log.warning("saved optimizer state does not match this stage's variables: starting a fresh optimizer")
        return False
    for v, a in zip(variables, arrays):
        v.assign(a)
    return True


# -- callbacks whose state survives a restart ------------------------------------------------------


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a restart (``state()`` / ``initial_state``)."""

    KEYS = ("wait", "best", "cooldown_counter")

    def __init__(self, initial_state: dict[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._initial_state = initial_state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in self.KEYS:
            if key in self._initial_state:
                setattr(self, key, self._initial_state[key])

    def state(self) -> dict[str, Any]:
        return {k: _jsonable(getattr(self, k, None)) for k in self.KEYS}


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters and best weights survive a restart."""

    KEYS = ("wait", "best", "best_epoch")

    def __init__(self, initial_state: dict[str, Any] | None = None, initial_best_weights=None, **kwargs):
        super().__init__(**kwargs)
        self._initial_state = initial_state or {}
        self._initial_best_weights = initial_best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in self.KEYS:
            if self._initial_state.get(key) is not None:
                setattr(self, key, self._initial_state[key])
        if self._initial_best_weights is not None:
            self.best_weights = self._initial_best_weights

    def state(self) -> dict[str, Any]:
        return {k: _jsonable(getattr(self, k, None)) for k in self.KEYS}


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class NaNGuard(keras.callbacks.Callback):
    """Stops the run with a clear error when an epoch's loss is not finite (before it is checkpointed).

    The message says what the checkpoint folder really holds: the last finite epoch (when one
    finished, :class:`EpochCheckpoint` saved it) or nothing to resume from.
    """

    def __init__(self, backbone: str, stage: str, store: CheckpointStore, state: TrainingState):
        super().__init__()
        self.backbone, self.stage, self.store, self.state = backbone, stage, store, state

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key in ("loss", "val_loss"):
            value = logs.get(key)
            if value is not None and not math.isfinite(float(value)):
                raise NonFiniteLossError(
                    f"{self.backbone} {self.stage} epoch {epoch + 1}: {key} is {float(value)}; training stopped. "
                    f"{self.saved()} Lower this stage's learning rate (train.stageN_lr) or switch mixed "
                    "precision off (train.mixed_precision=off).")

    def saved(self) -> str:
        """What the checkpoint folder holds for a restart, in words."""
        st = self.state
        if st.global_epoch and self.store.path(CHECKPOINT_LAST_WEIGHTS).exists():
            done = max((i for i, n in enumerate(st.epochs_done) if n), default=0)
            return (f"The last finite epoch (epoch {st.global_epoch}, {STAGE_NAMES[done]} epoch "
                    f"{st.epochs_done[done]}) is checkpointed in {self.store.location}.")
        return (f"No epoch finished with a finite loss, so nothing was checkpointed "
                f"({self.store.location} holds no weights to resume from).")


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: history, best weights, last weights, optimizer, callback counters, state."""

    def __init__(self, store: CheckpointStore, state: TrainingState, stage_index: int, stage_name: str,
                 stage_epochs: int, net: keras.Model, plateau: ResumableReduceLROnPlateau,
                 early: ResumableEarlyStopping | None, images_per_epoch: int):
        super().__init__()
        self.store, self.state, self.stage_index, self.net = store, state, stage_index, net
        self.stage_name, self.stage_epochs = stage_name, stage_epochs
        self.plateau, self.early, self.images_per_epoch = plateau, early, images_per_epoch
        self._lr = float("nan")
        self._t0 = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        st = self.state
        record = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.floating, np.integer))}
        record.update(epoch=epoch + 1, lr=self._lr, seconds=round(time.time() - self._t0, 2))
        hist = st.history.setdefault(self.stage_name, {})
        for k, v in record.items():
            hist.setdefault(k, []).append(v)
        st.epochs_done[self.stage_index] += 1
        st.global_epoch = epoch + 1
        st.fit_seconds += time.time() - self._t0
        st.images_seen += self.images_per_epoch
        changed = [CHECKPOINT_LAST_WEIGHTS, CHECKPOINT_OPTIMIZER]
        self.store.save_weights(self.net, CHECKPOINT_LAST_WEIGHTS)
        self.store.save_arrays(optimizer_arrays(self.model.optimizer), CHECKPOINT_OPTIMIZER)
        val_loss = logs.get("val_loss")
        if val_loss is not None and (st.best_val_loss is None or float(val_loss) < st.best_val_loss):
            st.best_val_loss, st.best_epoch = float(val_loss), epoch + 1
            self.store.copy(CHECKPOINT_LAST_WEIGHTS, CHECKPOINT_BEST_WEIGHTS)  # the same weights: no second save
            changed.append(CHECKPOINT_BEST_WEIGHTS)
        if self.early is not None:
            if self.early.best_weights is not None and self.early.best_epoch == epoch:
                self.store.save_arrays(self.early.best_weights, CHECKPOINT_EARLY_STOPPING)
                changed.append(CHECKPOINT_EARLY_STOPPING)
            st.early_stopping = self.early.state()
        st.plateau = self.plateau.state()
        st.lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if st.epochs_done[self.stage_index] >= self.stage_epochs or self.model.stop_training:
            # the stage is over: a restart begins the next one afresh
            st.stage_index, st.lr, st.plateau, st.early_stopping = self.stage_index + 1, None, {}, {}
        self.store.save_state(st, changed)


__all__ = [
    "CheckpointStore", "EpochCheckpoint", "NaNGuard", "NonFiniteLossError", "ResumableEarlyStopping",
    "ResumableReduceLROnPlateau", "STAGE_NAMES", "TrainingState", "optimizer_arrays", "restore_optimizer",
]
