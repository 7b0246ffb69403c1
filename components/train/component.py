"""KFP wrapper of training one backbone (logic: mammo.components.train.logic)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from mammo.components.config import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(dataset: Input[Dataset], backbone: str, config: dict, model: Output[Model],
          tensorboard: Output[Artifact]):
    """Three-stage fine-tuning of one backbone.

    ``model``: the train artifact (contracts: model, history, report, and the checkpoint folder
    unless ``train.checkpoint_dir`` is set); the class weights come from ``dataset``'s report.
    ``tensorboard``: the TensorBoard log directory, written during training; its metadata carries
    the KFP v1 viewer entry ``{"type": "tensorboard", "source": <uri>}`` so a UI or a TensorBoard
    pod can be pointed at it.
    Checkpoints under ``train.checkpoint_dir`` go to a subfolder named after this task's output
    URI, which stays the same when KFP retries the task, so a retry resumes where the pod died.
    """
    from mammo.components import storage
    from mammo.components.config import Config
    from mammo.components.runtime import artifact_dir, setup_logging
    from mammo.components.train.logic import checkpoint_key, run

    setup_logging()
    cfg = Config.from_dict(config)
    checkpoints = None
    if cfg.train.checkpoint_dir:
        checkpoints = storage.join(cfg.train.checkpoint_dir, f"{backbone}-{checkpoint_key(model.uri)}")
    result = run(dataset.path, backbone, artifact_dir(model.path), cfg, tensorboard_dir=artifact_dir(tensorboard.path),
                 checkpoint_dir=checkpoints)
    model.metadata.update({"backbone": backbone, "val_auc": result.val_auc, "val_accuracy": result.val_accuracy,
                           "epochs_per_stage": result.epochs_per_stage, "restarts": result.restarts})
    tensorboard.metadata.update({"backbone": backbone, "type": "tensorboard", "source": tensorboard.uri,
                                 "outputs": [{"type": "tensorboard", "source": tensorboard.uri}]})
