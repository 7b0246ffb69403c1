"""KFP wrapper of the ingest step (logic: mammo.components.ingest.logic.run)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(data_uri: str, normals_uri: str, config: dict, cases: Output[Dataset], rejects: Output[Dataset],
           data_fingerprint: str = ""):
    """CBIS-DDSM CSVs + image tree + normals (local or gs://) -> cases (Parquet dir) and rejects (Parquet).

    ``data_fingerprint`` is not read: it keys KFP's cache to the data (components/ingest/fingerprint.py)."""
    import json
    import shutil

    from mammo.components.config import Config
    from mammo.components.contracts import REJECTS, REPORT_JSON
    from mammo.components.ingest.logic import IngestError, run
    from mammo.components.runtime import artifact_dir, fail_with_summary, setup_logging

    setup_logging()
    out = artifact_dir(cases.path)
    try:
        report = run(data_uri, normals_uri, out, Config.from_dict(config))
    except IngestError as exc:  # refused data: rejects and report are written; show them, do not retry
        if (out / REJECTS).is_file():
            shutil.copyfile(out / REJECTS, rejects.path)
        written = json.loads((out / REPORT_JSON).read_text()) if (out / REPORT_JSON).is_file() else None
        raise fail_with_summary("ingest", str(exc), written) from exc
    shutil.copyfile(report.rejects_path, rejects.path)
    cases.metadata.update({"rows": report.totals.ingested, "rejected": report.totals.rejected,
                           "skipped": sum(report.skipped_reasons.values()), "resolution": report.resolution})
