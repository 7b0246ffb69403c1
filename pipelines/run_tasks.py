"""Two small helper tasks of the pipeline (not steps: they produce no data, only parameters).

* ``fingerprint_data`` (never cached): the fingerprint of the input trees
  (:mod:`mammo.components.ingest.fingerprint`), passed to ``ingest`` so that the cache of every
  data step follows the data in the bucket, not only its URI.
* ``resolve_config``: the run's whole config, i.e. the ``config`` parameter with the flat run
  parameters applied (:func:`~mammo.components.config.apply_run_parameters`; one place per
  setting), and the extraction shards ``[0, .., num_extract_shards - 1]`` as integers for the
  extraction ``ParallelFor``. Cached: its outputs depend on its inputs only.
"""

from typing import List, NamedTuple

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
                   balance_mode: str, image_size: int, weights: str,
                   num_extract_shards: int) -> NamedTuple("RunConfig", [("config", dict), ("shards", List[int])]):
    """The run's config (flat parameters over ``config``) and the integer extraction shard list."""
    from collections import namedtuple

    from mammo.components.config import apply_run_parameters

    if num_extract_shards < 1:
        raise ValueError(f"num_extract_shards must be >= 1, got {num_extract_shards}")
    cfg = apply_run_parameters(config, {
        "backbones": backbones, "auc_threshold": auc_threshold, "max_auc_drop": max_auc_drop,
        "balance_mode": balance_mode, "image_size": image_size, "weights": weights})
    shards = list(range(num_extract_shards))
    print(f"run config: backbones={cfg.train.backbones} image_size={cfg.patches.image_size} "
          f"balance={cfg.balance.mode} auc_threshold={cfg.gate.auc_threshold} shards={len(shards)}", flush=True)
    run_config = {k: v for k, v in cfg.to_dict().items() if k != "cluster"}  # cluster.*: compile-time
    return namedtuple("RunConfig", ["config", "shards"])(run_config, shards)
