"""KFP wrapper of balancing and splitting (logic: mammo.components.balance_split.logic)."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def balance_split(patches: Input[List[Dataset]], config: dict, dataset: Output[Dataset], counts: Output[Markdown]):
    """Join patch shards, split by patient, balance; Table-1 counts as Markdown."""
    import shutil
    from pathlib import Path

    from mammo.components.balance_split.logic import balance_split
    from mammo.components.config import Config
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    cfg = Config.from_dict(config)
    out = artifact_dir(dataset.path)
    balance_split([p.path for p in patches], out, cfg.balance, cfg.seed)
    shutil.copyfile(out / "counts.md", counts.path)
