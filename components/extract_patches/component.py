"""KFP wrapper of patch extraction (logic: mammo.components.extract_patches.logic.run)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def extract_patches(cases: Input[Dataset], config: dict, shard_index: int, num_shards: int,
                    patches: Output[Dataset], preview: Output[HTML]):
    """One shard of patches: TFRecords + manifest + preview grids (``preview`` as an HTML artifact)."""
    import shutil

    from mammo.components.config import Config
    from mammo.components.contracts import PREVIEW_HTML
    from mammo.components.extract_patches.logic import run
    from mammo.components.runtime import artifact_dir, setup_logging

    setup_logging()
    out = artifact_dir(patches.path)
    report = run(cases.path, out, Config.from_dict(config), shard_index=shard_index, num_shards=num_shards)
    shutil.copyfile(out / PREVIEW_HTML, preview.path)
    patches.metadata.update({"patches_per_class": report.patches_per_class, "patch_sources": report.patch_sources,
                             "mask_status": report.mask_status, "reject_reasons": report.reject_reasons,
                             "images": report.images, "protocol": report.protocol,
                             "padded_patches": report.padded_patches, "peak_worker_rss_mb": report.peak_worker_rss_mb})
