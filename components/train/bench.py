"""Training throughput benchmark (``mammo bench-train``): the real training step of a backbone.

For each backbone it builds exactly what :func:`~mammo.components.train.logic.run` trains
(the classifier inside :class:`~mammo.components.train.inputs.AugmentedTrainer`, augmentation on the
accelerator, Adam, the same mixed-precision / XLA / MirroredStrategy choices) in the chosen stage
(default stage 3: every layer trainable, the slowest), feeds it from the same tf.data pipeline
(PNG patches in a TFRecord file: synthetic ones, or a balance output with ``data_dir``), runs
``warmup`` steps (tracing, XLA compilation) and then times ``steps`` steps, waiting for each to finish.

Reported per backbone: images/s, mean step time, the share of the step time spent waiting for the
next batch from the input pipeline, the accelerator's peak memory (``None`` on a CPU) and the
process's peak resident memory.
"""

from __future__ import annotations

import logging
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mammo.components.config import CLASS_NAMES, TrainConfig
from mammo.components.contracts import split_records
from mammo.components.train.backbones import (
    build_model,
    get_backbone,
    input_size_of,
    resolve_weights,
    weights_cache_dir,
)

log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    backbone: str
    image_size: int
    input_size: int
    #: per accelerator, and over all replicas
    batch_size: int
    global_batch_size: int
    stage: int
    device: str
    replicas: int
    mixed_precision: bool
    jit_compile: bool
    steps: int
    images_per_second: float
    step_time_ms: float
    step_time_ms_p90: float
    #: share of the step time spent in next(iterator), waiting on the input pipeline
    input_wait_share: float
    #: warm-up (tracing, compilation, first steps)
    warmup_seconds: float
    #: peak accelerator memory in MiB (max over GPUs); None without an accelerator
    peak_accelerator_mb: float | None
    #: peak resident memory of this process in MiB (host RAM, includes TensorFlow itself)
    peak_host_rss_mb: float
    params: int

    def as_dict(self) -> dict:
        return asdict(self)


def synthetic_records(path: Path, image_size: int, count: int, seed: int = 0) -> Path:
    """``count`` PNG patches (smooth background + noise + a bright blob) in one TFRecord file."""
    from mammo.components.imaging import encode_png
    from mammo.components.tfrecords import serialize_patch, write_records

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    records = []
    for i in range(count):
        label = i % len(CLASS_NAMES)
        cy, cx = rng.uniform(0.3, 0.7, 2)
        img = 90 + 40 * xx + 60 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01) + rng.normal(0, 12, xx.shape)
        records.append(serialize_patch(encode_png(np.clip(img, 0, 255).astype(np.uint8)), label,
                                       {"patch_id": f"bench{i}"}))
    write_records(path, records)
    return path


def _peak_host_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


class _TimedIterator:
    """Wraps an iterator and adds up the time spent waiting in ``next``."""

    def __init__(self, iterator):
        self.iterator, self.wait = iterator, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        item = next(self.iterator)
        self.wait += time.perf_counter() - t
        return item


def bench_train(backbone_name: str, image_size: int, batch_size: int = 0, steps: int = 20, warmup: int = 3,
                cfg: TrainConfig | None = None, stage: int = 3, data_dir: str | Path | None = None,
                seed: int = 0) -> BenchResult:
    """Time ``steps`` training steps of one backbone (after ``warmup`` untimed ones)."""
    import keras
    import tensorflow as tf

    from mammo.components.train.inputs import AugmentedTrainer, augmentation, make_dataset, split_files
    from mammo.components.train.logic import plan_stages, resolve_acceleration, set_trainable

    cfg = cfg or TrainConfig(weights="none")
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
    backbone = get_backbone(backbone_name, cfg)
    accel = resolve_acceleration(cfg)
    batch = batch_size or cfg.batch_size or backbone.batch_size
    global_batch = batch * accel.replicas
    input_size = input_size_of(backbone, cfg)
    weights = resolve_weights(cfg.weights, weights_cache_dir(cfg))
    keras.utils.set_random_seed(seed)
    previous_policy = keras.mixed_precision.global_policy()
    if accel.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    gpus = [f"GPU:{i}" for i in range(accel.gpus)]
    with tempfile.TemporaryDirectory(prefix="mammo-bench-") as tmp:
        try:
            if data_dir:
                files = split_files(data_dir, "train")
            else:
                count = max(4 * global_batch, 64)
                files = [str(synthetic_records(Path(tmp) / split_records("train"), image_size, count, seed))]
            with accel.strategy.scope():
                net, base, _ = build_model(backbone, image_size, cfg, weights=weights)
                trainer = AugmentedTrainer(net, augmentation(cfg, seed), name=f"bench_{backbone.slug}")
                set_trainable(base, plan_stages(cfg, backbone, len(base.layers))[stage - 1].frozen_layers)
                trainer.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy",
                                jit_compile=accel.jit_compile)
            ds = make_dataset(files, image_size, global_batch, True, seed, cfg.shuffle_buffer,
                              drop_remainder=True).repeat()
            x0, y0 = next(iter(ds))
            t0 = time.perf_counter()
            trainer.train_on_batch(x0, y0)  # builds the model's and the optimizer's variables
            iterator = _TimedIterator(iter(accel.strategy.experimental_distribute_dataset(ds)))
            train_function = trainer.make_train_function()

            def one_step() -> float:
                logs = train_function(iterator)
                return float(keras.ops.convert_to_numpy(logs["loss"]))  # waits for the step to finish

            for _ in range(max(1, warmup)):
                one_step()
            warmup_s = time.perf_counter() - t0
            for gpu in gpus:
                tf.config.experimental.reset_memory_stats(gpu)
            iterator.wait = 0.0
            times = []
            start = time.perf_counter()
            for _ in range(steps):
                t = time.perf_counter()
                loss = one_step()
                times.append(time.perf_counter() - t)
            total = time.perf_counter() - start
            if not np.isfinite(loss):
                log.warning("%s: the benchmark's loss is %s", backbone_name, loss)
            peak = (max(tf.config.experimental.get_memory_info(g)["peak"] for g in gpus) / 2**20) if gpus else None
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
    result = BenchResult(
        backbone=backbone_name, image_size=image_size, input_size=input_size, batch_size=batch,
        global_batch_size=global_batch, stage=stage, device=accel.device, replicas=accel.replicas,
        mixed_precision=accel.mixed_precision, jit_compile=accel.jit_compile, steps=steps,
        images_per_second=round(steps * global_batch / total, 2),
        step_time_ms=round(1000 * statistics.fmean(times), 1),
        step_time_ms_p90=round(1000 * float(np.percentile(times, 90)), 1),
        input_wait_share=round(iterator.wait / total, 4), warmup_seconds=round(warmup_s, 1),
        peak_accelerator_mb=round(peak, 1) if peak is not None else None,
        peak_host_rss_mb=round(_peak_host_rss_mb(), 1), params=int(net.count_params()),
    )
    log.info("%s: %.1f images/s, step %.0f ms, input wait %.1f%%", backbone_name, result.images_per_second,
             result.step_time_ms, 100 * result.input_wait_share)
    keras.backend.clear_session()
    return result


def format_table(results: list[BenchResult]) -> str:
    """A Markdown table of benchmark results (the README's format)."""
    head = ("| backbone | patch -> input | batch | device | mixed fp16 | XLA | images/s | step ms | input wait | "
            "peak accel. MiB | host RSS MiB |")
    rows = [head, "|" + "---|" * 11]
    for r in results:
        peak = f"{r.peak_accelerator_mb:.0f}" if r.peak_accelerator_mb is not None else "n/a"
        rows.append(f"| {r.backbone} | {r.image_size} -> {r.input_size} | {r.global_batch_size} | {r.device} | "
                    f"{'on' if r.mixed_precision else 'off'} | {'on' if r.jit_compile else 'off'} | "
                    f"{r.images_per_second:.2f} | {r.step_time_ms:.0f} | {100 * r.input_wait_share:.1f}% | {peak} | "
                    f"{r.peak_host_rss_mb:.0f} |")
    return "\n".join(rows)
