"""Benchmark of ingest: the real CBIS-DDSM CSVs (3,568 rows) against a generated NBIA tree of that size.

    python benchmarks/bench_ingest.py [--csv-dir ../shared/data/cbis-ddsm] [--emulator]

Prints rows/s; see :mod:`mammo.components.ingest.benchmark` (also run by the slow test
``tests/test_ingest.py::test_full_real_csvs_resolve_against_a_full_size_tree_in_seconds``).
"""

from mammo.components.ingest.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
