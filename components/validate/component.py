"""KFP wrapper of the data validation step (logic: mammo.components.validate.logic)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_op(cases: Input[Dataset], config: dict, report: Output[HTML], data_docs: Output[Artifact]):
    """Great Expectations suite over cases; Data Docs as HTML; fails on critical expectations."""
    import shutil
    from pathlib import Path

    import pandas as pd

    from mammo.components.config import Config
    from mammo.components.runtime import artifact_dir, setup_logging
    from mammo.components.validate.logic import validate_cases

    setup_logging()
    df = pd.read_parquet(Path(cases.path) / "cases.parquet")
    cfg = Config.from_dict(config)
    result = validate_cases(df, artifact_dir(data_docs.path), min_per_class=cfg.validate.min_per_class)
    shutil.copyfile(result.html_path, report.path)
    if not result.success:
        raise RuntimeError("data validation failed (critical expectations): " + "; ".join(result.critical_failures))
