"""KFP wrapper of balancing and splitting (logic: mammo.components.balance_split.logic.run)."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def balance_split(patches: Input[List[Dataset]], config: dict, dataset: Output[Dataset], counts: Output[Markdown]):
    """Join patch shards, split by patient, balance; Table-1 counts as Markdown."""
    import shutil

    from mammo.components.balance_split.logic import run
    from mammo.components.config import Config
    from mammo.components.contracts import COUNTS_MD
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    out = artifact_dir(dataset.path)
    run([p.path for p in patches], out, Config.from_dict(config))
    shutil.copyfile(out / COUNTS_MD, counts.path)
