"""KFP wrapper of the ingest step (logic: mammo.components.ingest.logic)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest_op(data_uri: str, normals_uri: str, config: dict, cases: Output[Dataset], rejects: Output[Dataset]):
    """CBIS-DDSM CSVs + DICOM tree + normals -> cases (Parquet dir) and rejects (Parquet)."""
    import shutil

    from mammo.components.config import Config
    from mammo.components.ingest.logic import ingest
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    report = ingest(data_uri, normals_uri, artifact_dir(cases.path), Config.from_dict(config).ingest)
    shutil.copyfile(report.rejects_path, rejects.path)
    cases.metadata.update({"rows": report.totals.ingested, "rejected": report.totals.rejected})
