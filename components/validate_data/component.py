"""KFP wrapper of the data validation step (logic: mammo.components.validate_data.logic.run)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_data(cases: Input[Dataset], config: dict, report: Output[HTML], data_docs: Output[Artifact]):
    """Great-expectations suite and group checks over cases. The report page is the HTML artifact,
    written also when the data fail or the validation cannot run; a failure prints what failed."""
    import shutil

    from mammo.components.config import Config
    from mammo.components.contracts import REPORT_HTML
    from mammo.components.runtime import artifact_dir, setup_logging
    from mammo.components.validate_data.logic import run

    setup_logging()
    out = artifact_dir(data_docs.path)
    try:
        run(cases.path, out, Config.from_dict(config))
    finally:
        if (out / REPORT_HTML).is_file():
            shutil.copyfile(out / REPORT_HTML, report.path)
