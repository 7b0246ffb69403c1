"""KFP wrapper of the data validation step (logic: mammo.components.validate_data.logic)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_data(cases: Input[Dataset], config: dict, report: Output[HTML], data_docs: Output[Artifact]):
    """Great Expectations suite over cases; the report page is the HTML artifact (always written, also
    when the suite cannot run); fails on critical expectations with a summary of what failed."""
    import shutil
    from pathlib import Path

    import pandas as pd

    from mammo.components.config import Config
    from mammo.components.runtime import artifact_dir, setup_logging
    from mammo.components.validate_data.logic import ValidationRunError, validate_cases

    setup_logging()
    df = pd.read_parquet(Path(cases.path) / "cases.parquet")
    v = Config.from_dict(config).validate
    try:
        result = validate_cases(df, artifact_dir(data_docs.path), min_per_class=v.min_per_class,
                                min_image_side=v.min_image_side, max_image_side=v.max_image_side)
    except ValidationRunError as exc:
        shutil.copyfile(exc.html_path, report.path)
        raise
    shutil.copyfile(result.html_path, report.path)
    if not result.success:
        raise RuntimeError("data validation failed (critical expectations): " + "; ".join(result.critical_failures))
