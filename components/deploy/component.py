"""KFP wrapper of the deploy step (logic: mammo.components.deploy.logic.run)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def deploy(model: Input[Model], decision: Input[Artifact], config: dict, serving_root: str,
           serving: Output[Artifact]):
    """Export a serving SavedModel (with its evaluation record and model card) and push it as a new
    integer version under serving_root; optionally wait for TF Serving, check one answer, prune."""
    from mammo.components.config import Config
    from mammo.components.deploy.logic import run
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    record = run(model.path, decision.path, serving_root, artifact_dir(serving.path), Config.from_dict(config))
    serving.metadata.update({k: record[k] for k in ("model_name", "version", "path")})
