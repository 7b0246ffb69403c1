"""Ingest throughput: the real CBIS-DDSM CSVs against a generated NBIA tree of the same size.

Plants one tiny DICOM per file the CSVs name (3,103 full images and the ROI-mask / cropped-image
series of all 3,568 rows: ~10,000 files in the NBIA download layout, crop and mask in varying
order), then runs :func:`mammo.components.ingest.logic.run` on it and prints rows/s::

    python -m mammo.components.ingest.benchmark --csv-dir ../shared/data/cbis-ddsm
    python -m mammo.components.ingest.benchmark --csv-dir ... --emulator   # the same tree via a GCS emulator

``--emulator`` needs the test extra (``gcp-storage-emulator``); it starts the emulator in-process on
loopback, uploads the tree and ingests ``gs://bench/cbis``. The emulator stores objects slowly and
serves one request at a time, so use ``--max-rows`` with it (e.g. 100 rows per CSV) and read its
rows/s as a lower bound: real GCS serves the 10 concurrent ranged reads in parallel.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mammo.components.config import Config
from mammo.components.ingest.logic import CSV_FILES, IngestReport, read_case_csv, run

log = logging.getLogger(__name__)


def _dicom_bytes(pixels: np.ndarray, n: int) -> bytes:
    """One small DICOM (the synthetic generator's writer) as bytes."""
    from mammo.components.synth.logic import DicomHeader, write_dicom

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.dcm"
        hdr = DicomHeader("BENCH", "BENCH^ONLY", "19600101", "1.2.3", "1.2.4", f"1.2.5.{n}", dt.date(2016, 7, 20),
                          "101010", "ACC", "bench", n, "L", "CC")
        write_dicom(path, pixels, hdr)
        return path.read_bytes()


def _nbia_dir(csv_path: str, description: str, k: int) -> str:
    folder, study, series, _ = csv_path.split("/")
    na = "NA-" if k % 3 == 0 else ""
    return f"CBIS-DDSM/{folder}/07-20-2016-DDSM-{na}{study[-5:]}/1.000000-{description}-{series[-5:]}"


def build_tree(csv_dir: str | Path, root: str | Path, shape: tuple[int, int] = (64, 48),
               max_rows: int | None = None) -> int:
    """The four CSVs (their first ``max_rows`` rows if given) plus an NBIA-layout file for every path
    they name; returns the files written."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 3: shape[0] // 2, shape[1] // 3: shape[1] // 2] = 255
    full_b = _dicom_bytes(np.full(shape, 20000, np.uint16), 1)
    mask_b = _dicom_bytes(mask, 2)
    crop_b = _dicom_bytes(np.full((16, 16), 30000, np.uint16), 3)
    written: set[str] = set()

    def put(rel: str, data: bytes) -> None:
        if rel in written:
            return
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.add(rel)

    for name in CSV_FILES:
        if max_rows is None:
            shutil.copy(Path(csv_dir) / name, root / name)
        else:
            read_case_csv(Path(csv_dir) / name).head(max_rows).to_csv(root / name, index=False)
        for k, row in enumerate(read_case_csv(root / name).to_dict("records")):
            put(_nbia_dir(row["image file path"], "full mammogram images", k) + "/1-1.dcm", full_b)
            roi_dir = _nbia_dir(row["ROI mask file path"], "ROI mask images", 0)
            crop_dir = _nbia_dir(row["cropped image file path"], "cropped images", 0)
            if roi_dir.rsplit("-", 1)[1] == crop_dir.rsplit("-", 1)[1]:  # one series holds both
                first, second = (mask_b, crop_b) if k % 2 else (crop_b, mask_b)
                put(roi_dir + "/1-1.dcm", first)
                put(roi_dir + "/1-2.dcm", second)
            else:
                put(roi_dir + "/1-1.dcm", mask_b)
                put(crop_dir + "/1-1.dcm", crop_b)
    return len(written)


def _normals(root: Path) -> Path:
    normals = root / "normals"
    (normals / "N_00001").mkdir(parents=True, exist_ok=True)
    (normals / "N_00001" / "N_00001_LEFT_CC.dcm").write_bytes(_dicom_bytes(np.full((64, 48), 9000, np.uint16), 9))
    return normals


def bench(csv_dir: str | Path, work: str | Path, emulator: bool = False, io_workers: int = 10,
          max_rows: int | None = None) -> IngestReport:
    """Build the tree under ``work`` and ingest it (locally, or from an in-process GCS emulator)."""
    work = Path(work)
    started = time.perf_counter()
    n_files = build_tree(csv_dir, work / "cbis", max_rows=max_rows)
    normals = _normals(work)
    log.info("planted %d files in %.1f s", n_files, time.perf_counter() - started)
    data_uri, normals_uri = str(work / "cbis"), str(normals)
    server = None
    if emulator:
        import socket

        from gcp_storage_emulator.server import create_server

        from mammo.components import storage

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = create_server("127.0.0.1", port, in_memory=True)
        server.start()
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
        storage.client().create_bucket("bench")
        t = time.perf_counter()
        storage.upload_tree(work / "cbis", "gs://bench/cbis")
        storage.upload_tree(normals, "gs://bench/normals")
        log.info("uploaded to the emulator in %.1f s", time.perf_counter() - t)
        data_uri, normals_uri = "gs://bench/cbis", "gs://bench/normals"
    try:
        return run(data_uri, normals_uri, work / "out", Config().with_overrides({"ingest.io_workers": io_workers}))
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv-dir", default=os.environ.get("MAMMO_CBIS_CSV_DIR", "../shared/data/cbis-ddsm"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--emulator", action="store_true", help="ingest from an in-process GCS emulator")
    parser.add_argument("--io-workers", type=int, default=10)
    parser.add_argument("--max-rows", type=int, default=None,
                        help="use only the first N rows of each CSV (the emulator stores ~10 objects/s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mammo.components.ingest.logic").setLevel(logging.ERROR)
    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        report = bench(args.csv_dir, args.work or tmp, emulator=args.emulator, io_workers=args.io_workers,
                       max_rows=args.max_rows)
    t = report.totals
    print(json.dumps({"rows": t.read, "ingested": t.ingested, "rejected": t.rejected,
                      "header_reads": report.header_reads, "seconds": report.seconds,
                      "rows_per_s": report.rows_per_s, "source": "gcs-emulator" if args.emulator else "local"}))
    print(f"{t.read} rows in {report.seconds:.1f} s: {report.rows_per_s:.0f} rows/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
