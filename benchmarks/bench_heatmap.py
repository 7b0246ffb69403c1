"""Benchmark of whole-mammogram heatmaps (``mammo predict --heatmap``) on CPU.

    python benchmarks/bench_heatmap.py [--model SAVEDMODEL] [--profile demo|paper] [--backbone NAME]
                                       [--shape 5000 3000] [--patch-mm 30] [--spacing-mm 0.05]
                                       [--stride 0.5] [--batch 32] [--images 2]

Without ``--model`` it builds the profile's first backbone (random weights: speed does not depend on
them) at the profile's patch size, exports it with the deploy step's exporter and loads it as
``mammo predict --model`` does. It then scans ``--images`` synthetic full mammograms of ``--shape``
(a breast filling about half of the image) with the real heatmap code and prints:

* seconds per full image (breast mask, windows cut and resized, model calls, maps), mean over images;
* windows scored per image and windows per second;
* the time of the breast mask alone, and peak resident memory of the process.

Run it on an otherwise idle machine; the README's heatmap figure comes from this script.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_mammogram(rows: int, cols: int, seed: int) -> np.ndarray:
    """A textured breast (half-ellipse against the left edge) with a few bright blobs, on a dark film."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:rows, 0:cols]
    breast = ((yy - rows / 2) / (rows * 0.45)) ** 2 + (xx / (cols * 0.75)) ** 2 <= 1.0
    image = np.where(breast, rng.normal(110, 12, (rows, cols)), rng.normal(8, 3, (rows, cols)))
    for _ in range(5):
        cy, cx, r = rng.integers(rows // 4, 3 * rows // 4), rng.integers(50, cols // 2), rng.integers(20, 80)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 230
    return np.clip(image, 0, 255).astype(np.uint8)


def build_export(profile: str, backbone_name: str | None, folder: Path) -> tuple[Path, int, str]:
    from mammo.components.config import load_config
    from mammo.components.deploy.export import export_serving_model
    from mammo.components.train.backbones import build_model, get_backbone

    cfg = load_config(profile, None, ["train.weights=none"])
    name = backbone_name or cfg.train.backbones[0]
    size = cfg.patches.image_size
    model, _, _ = build_model(get_backbone(name, cfg.train), size, cfg.train, weights=None)
    model.save(folder / "model.keras")
    return export_serving_model(folder / "model.keras", folder / "export"), size, name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an exported serving SavedModel (default: build one)")
    parser.add_argument("--profile", default="demo", choices=["demo", "paper"])
    parser.add_argument("--backbone", help="default: the profile's first backbone")
    parser.add_argument("--shape", type=int, nargs=2, default=(5000, 3000), metavar=("ROWS", "COLS"))
    parser.add_argument("--patch-mm", type=float, default=30.0)
    parser.add_argument("--spacing-mm", type=float, default=0.05)
    parser.add_argument("--stride", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from mammo.components.deploy.export import PIXELS_SIGNATURE, read_model_record
    from mammo.components.deploy.serving_client import LocalModel
    from mammo.components.explain.heatmap import sliding_window_maps
    from mammo.components.extract_patches.geometry import breast_mask

    with tempfile.TemporaryDirectory(prefix="bench-heatmap-") as tmp:
        if args.model:
            model_dir, size, name = Path(args.model), int(read_model_record(args.model)["image_size"]), args.model
        else:
            model_dir, size, name = build_export(args.profile, args.backbone, Path(tmp))
        model = LocalModel(model_dir)

        def predict_fn(windows: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict(PIXELS_SIGNATURE, list(windows))["probabilities"])

        predict_fn(np.zeros((1, size, size), np.uint8))  # graph tracing is a one-off, not per image
        seconds, windows, mask_s = [], [], []
        for i in range(args.images):
            image = synthetic_mammogram(*args.shape, seed=i)
            t0 = time.perf_counter()
            mask = breast_mask(image)
            mask_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = sliding_window_maps(predict_fn, image, args.spacing_mm, args.patch_mm, args.stride, args.batch,
                                         input_size=size)
            seconds.append(time.perf_counter() - t0)  # includes computing the breast mask again
            windows.append(result.n_windows)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_image = float(np.mean(seconds))
    print(f"model: {name}, input {size} px; image {args.shape[0]}x{args.shape[1]}, {args.patch_mm} mm windows at "
          f"{args.spacing_mm} mm ({result.window_px} px), stride {args.stride} ({result.stride_px} px), batch {args.batch}")
    print(f"CPU cores available: {len(os.sched_getaffinity(0))}")
    print(f"seconds per full image: {per_image:.2f} (mean of {args.images}: {', '.join(f'{s:.2f}' for s in seconds)})")
    print(f"windows per image: {np.mean(windows):.0f}; windows/s: {np.sum(windows) / np.sum(seconds):.1f}")
    print(f"breast mask alone: {np.mean(mask_s):.2f} s; peak RSS: {rss_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
