"""KFP wrapper of the ingest step (logic: mammo.components.ingest.logic.run)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(data_uri: str, normals_uri: str, config: dict, cases: Output[Dataset], rejects: Output[Dataset],
           data_fingerprint: str = ""):
    """CBIS-DDSM CSVs + image tree + normals (local or gs://) -> cases (Parquet dir) and rejects (Parquet).

    ``data_fingerprint`` is not read: it keys KFP's cache to the data (components/ingest/fingerprint.py)."""
    import shutil

    from mammo.components.config import Config
    from mammo.components.ingest.logic import run
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    report = run(data_uri, normals_uri, artifact_dir(cases.path), Config.from_dict(config))
    shutil.copyfile(report.rejects_path, rejects.path)
    cases.metadata.update({"rows": report.totals.ingested, "rejected": report.totals.rejected,
                           "skipped": sum(report.skipped_reasons.values()), "resolution": report.resolution})
