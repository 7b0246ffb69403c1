"""Benchmark of patch extraction on full-size synthetic mammograms.

    python benchmarks/bench_extract.py [--out DIR] [--shape 5300 3100] [--per-class 2] [--workers N]

Synthesizes a small CBIS-DDSM-like download at full size (``--per-class 2`` gives 8 abnormal
images plus 2 normal CC views used for patches: 10 images), ingests it, then times the real
extraction code (:func:`mammo.components.extract_patches.logic.plan_jobs` and its per-image work) with one process
and with a pool of ``--workers`` spawned processes, and the whole step (``run``: patches,
TFRecords, manifest, previews). Workers are spawned, as in the step. It prints:

* full-size images per second, and per second per core (= per worker: one worker per core);
* peak resident memory per worker process (``ru_maxrss`` of each spawned worker, interpreter and
  imports included), and the baseline of a worker that only imported the extraction code;
* the peak of traced allocations while one image is processed (``tracemalloc``: numpy arrays and
  Python objects; PIL's and pydicom's C buffers are not traced);
* the mean encoded PNG size of a patch (what ``records_per_shard`` multiplies).

The images are read from the local page cache (just written): reading from a disk or from GCS
adds its own time per image (~33 MB per 5300x3100 16-bit DICOM).

Run it on an otherwise idle machine; the figures in README.md ("Performance (patch extraction)")
come from this script.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _import_only() -> float:
    """Peak RSS (MB) of a spawned worker that has imported the extraction code and done nothing."""
    import pydicom  # noqa: F401  (the imports are the point: the first image would pay for them)
    import scipy.ndimage  # noqa: F401
    import skimage.filters  # noqa: F401

    import mammo.components.extract_patches.logic as logic

    return logic._peak_rss_mb()


def _worker_baseline_mb() -> float:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_import_only).result()


def _timed_pool(jobs: list, workers: int) -> tuple[float, float, list[dict]]:
    """(seconds, peak RSS per worker in MB, results) of the jobs on a warm pool of spawned workers.

    The workers are started and have imported the extraction code before the clock starts (a
    one-off ~1-2 s per extraction task that a benchmark of 10 images would otherwise be all about).
    """
    from mammo.components.extract_patches.logic import _patches_for_image

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for f in [pool.submit(_import_only) for _ in range(workers)]:
            f.result()
        t = time.perf_counter()
        out = list(pool.map(_patches_for_image, jobs, chunksize=1))
        wall = time.perf_counter() - t
    return wall, max(rss for _, rss in out), [r for res, _ in out for r in res]


def _traced_peaks_mb(jobs: list) -> list[float]:
    """Peak traced allocation (MB) while each job runs, in this process."""
    from mammo.components.extract_patches.logic import _patches_for_image

    peaks = []
    tracemalloc.start()
    try:
        for job in jobs:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            results, _ = _patches_for_image(job)
            peaks.append((tracemalloc.get_traced_memory()[1] - base) / 2**20)
            del results
    finally:
        tracemalloc.stop()
    return peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--shape", type=int, nargs=2, default=(5300, 3100), metavar=("ROWS", "COLS"))
    parser.add_argument("--per-class", type=int, default=2, help="synth rows per abnormal class (2 -> 10 images)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pool size (default: all cores)")
    parser.add_argument("--repeat", type=int, default=3, help="process the image list this many times per timing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import pandas as pd

    from mammo.components.config import Config
    from mammo.components.extract_patches.logic import plan_jobs, run
    from mammo.components.ingest.logic import run as ingest_run
    from mammo.components.synth.logic import synthesize

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        t = time.perf_counter()
        synthesize(work / "data", per_class=args.per_class, seed=args.seed, image_shape=tuple(args.shape),
                   progress=False)
        cases_path = ingest_run(work / "data/cbis", work / "data/normals", work / "ingest", Config()).cases_path
        print(f"synthesized and ingested in {time.perf_counter() - t:.1f}s: {work / 'data'}")
        cfg = Config(seed=args.seed)
        _, lesion_jobs, normal_jobs = plan_jobs(pd.read_parquet(cases_path), cfg.patches, args.seed)
        jobs = lesion_jobs + normal_jobs  # normal crops at the fixed side here (no lesion sides passed)
        jobs = jobs * max(1, args.repeat)
        n_images = len(jobs)
        rows: list[tuple[str, int, float, float, float]] = []
        load_before = os.getloadavg()[0]
        for workers in sorted({1, max(1, args.workers)}):
            wall, peak_rss, results = _timed_pool(jobs, workers)
            rows.append((f"extraction, warm pool of {workers}", workers, wall, n_images / wall, peak_rss))
        pngs = [len(r["png"]) for r in results if "png" in r]
        t = time.perf_counter()
        report = run(Path(cases_path).parent, work / "patches", cfg, workers=args.workers, progress=False)
        wall = time.perf_counter() - t
        rows.append(("whole step once (extract_patches: pool start, TensorFlow import, TFRecords, previews)",
                     report.workers, wall, report.images / wall, report.peak_worker_rss_mb))
        baseline = _worker_baseline_mb()
        traced = _traced_peaks_mb(jobs)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{n_images // max(1, args.repeat)} full-size images of {args.shape[0]}x{args.shape[1]} px (16/12-bit DICOM), "
          f"each processed {max(1, args.repeat)} times per timing ({n_images} image extractions; the whole "
          f"step once), {len(pngs) // max(1, args.repeat)} patches of {cfg.patches.image_size} px, {os.cpu_count()} core(s), "
          f"Python {sys.version.split()[0]}, 1-min load average before: {load_before:.1f}\n")
    print("| run | workers | seconds | full-size images/s | images/s per core | peak RSS per worker (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, workers, wall, ips, rss in rows:
        print(f"| {name} | {workers} | {wall:.1f} | {ips:.2f} | {ips / workers:.2f} | {rss:.0f} |")
    print(f"\nworker baseline (spawned, extraction code imported, no image): {baseline:.0f} MB RSS")
    print(f"traced allocations per image: peak {max(traced):.0f} MB, mean {sum(traced) / len(traced):.0f} MB")
    print(f"encoded patch PNG: mean {sum(pngs) / len(pngs) / 1024:.1f} KiB "
          f"(x records_per_shard={cfg.patches.records_per_shard} -> ~{sum(pngs) / len(pngs) * cfg.patches.records_per_shard / 2**20:.0f} MB "
          f"per TFRecord file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
