"""KFP wrapper of training one backbone (logic: mammo.components.train.logic)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from mammo.components.config import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_op(dataset: Input[Dataset], backbone: str, config: dict, model: Output[Model]):
    """Three-stage fine-tuning of one backbone; model.keras, history and TensorBoard logs."""
    import json
    from pathlib import Path

    from mammo.components.config import Config
    from mammo.components.runtime import artifact_dir, setup_logging
    from mammo.components.train.logic import train_backbone

    setup_logging()
    cfg = Config.from_dict(config)
    weights_file = Path(dataset.path) / "report.json"
    class_weights = json.loads(weights_file.read_text()).get("class_weights") if weights_file.exists() else None
    result = train_backbone(dataset.path, backbone, artifact_dir(model.path), cfg.train, cfg.seed, class_weights)
    model.metadata.update({"backbone": backbone, "val_auc": result.val_auc, "val_accuracy": result.val_accuracy})
