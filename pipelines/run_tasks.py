"""Three small helper tasks of the pipeline (not steps: they produce no data, only parameters).

* ``fingerprint_data`` (never cached): the fingerprint of the input trees
  (:mod:`mammo.components.ingest.fingerprint`), passed to ``ingest`` so that the cache of every
  data step follows the data in the bucket, not only its URI.
* ``resolve_config``: the run's whole config, i.e. the ``config`` parameter with the flat run
  parameters applied (:func:`~mammo.components.config.apply_run_parameters`; one place per
  setting). Cached: its output depends on its inputs only.
* ``shard_indices``: the extraction shards ``[0, .., num_extract_shards - 1]`` as integers, the
  items of the extraction ``ParallelFor`` (a task's single ``Output``: kfp.local iterates over
  nothing else), so no second list has to agree with the count. Cached.
"""

from typing import List

from kfp import dsl

from mammo.components.config import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def fingerprint_data(data_uri: str, normals_uri: str) -> str:
    """sha256 over every input object's path, size and generation (GCS) or mtime (local files)."""
    from mammo.components.ingest.fingerprint import fingerprint
    from mammo.components.runtime import setup_logging

    setup_logging()
    value = fingerprint(data_uri, normals_uri)
    print(f"data fingerprint of {data_uri} + {normals_uri}: {value}", flush=True)
    return value


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def resolve_config(config: dict, backbones: List[str], auc_threshold: float, max_auc_drop: float,
                   balance_mode: str, image_size: int, weights: str) -> dict:
    """The run's config: the flat parameters applied to ``config`` (which must not set them)."""
    from mammo.components.config import apply_run_parameters

    cfg = apply_run_parameters(config, {
        "backbones": backbones, "auc_threshold": auc_threshold, "max_auc_drop": max_auc_drop,
        "balance_mode": balance_mode, "image_size": image_size, "weights": weights})
    print(f"run config: backbones={cfg.train.backbones} image_size={cfg.patches.image_size} "
          f"balance={cfg.balance.mode} auc_threshold={cfg.gate.auc_threshold} weights={cfg.train.weights}", flush=True)
    return {k: v for k, v in cfg.to_dict().items() if k != "cluster"}  # cluster.*: compile-time


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def shard_indices(num_extract_shards: int) -> List[int]:
    """``[0, .., num_extract_shards - 1]``: one extraction task per shard."""
    if num_extract_shards < 1:
        raise ValueError(f"num_extract_shards must be >= 1, got {num_extract_shards}")
    return list(range(num_extract_shards))
