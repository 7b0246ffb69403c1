"""Tiny balanced datasets for the training tests: what balance_split writes, at 32 px."""

from pathlib import Path

import numpy as np

from mammo.components.config import CLASS_NAMES, Config, TrainConfig, demo_config
from mammo.components.contracts import split_records, split_shards_glob, write_report
from mammo.components.imaging import encode_png
from mammo.components.tfrecords import serialize_patch, write_records

#: tinycnn on 32 px patches, one short epoch per stage: a full three-stage run in seconds
TINY = TrainConfig(backbones=["tinycnn"], weights="none", input_size=32, batch_size=8, stage1_epochs=1,
                   stage2_epochs=1, stage3_max_epochs=1, steps_per_epoch=1, bn_momentum=0.9)


def tiny_config(**train) -> Config:
    """The demo profile with :data:`TINY` training settings (and ``train`` overrides)."""
    cfg = demo_config()
    cfg.train = TrainConfig(**{**TINY.__dict__, **train})
    return cfg


def tiny_dataset(path: Path, n_per_class: int = 4, size: int = 32, shards: int = 1,
                 class_weights: dict[str, float] | None = None) -> Path:
    """train/validation TFRecords of class-dependent gray levels (``shards`` files for train) and the
    balance_split report (with ``class_weights``)."""
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
                name = split_shards_glob(split).replace("*", f"{s:05d}-of-{shards:05d}")
                write_records(path / name, recs[s::shards])
        else:
            write_records(path / split_records(split), recs)
    write_report(path, "balance_split", {"mode": "class_weights" if class_weights else "undersample",
                                         "class_weights": class_weights or {}})
    return path
