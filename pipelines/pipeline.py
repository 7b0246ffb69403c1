"""The mammo pipeline: the whole DAG on one screen.

fingerprint_data, resolve_config, shard_indices (helper tasks: parameters only)
  -> ingest -> validate_data -> extract_patches (ParallelFor over integer shards) -> balance_split
  -> ParallelFor backbone: train (GPU) -> evaluate
  -> select_and_gate (Collected) -> If promoted: deploy

The run form (what the KFP UI shows) is the pipeline's typed parameters, described in the
pipeline docstring's ``Args:``: the URIs, the settings users change per run
(:data:`~mammo.components.config.RUN_PARAMETERS`), ``num_extract_shards`` and ``config`` for
everything else. Each setting has one place: ``resolve_config`` applies the flat parameters to
``config`` and refuses a ``config`` that sets one of them (or any ``cluster`` key); every step
reads the resolved config.

KFP fixes a task's resources, scheduling, retries and a loop's parallelism when the pipeline is
compiled, so :func:`build_pipeline` reads them from a config's ``cluster`` section (see
:class:`~mammo.components.config.ClusterConfig`); ``mammo submit / schedule`` compile at submit
time, so ``--set cluster.train_gpus=2 --set cluster.gpu_type=nvidia-l4`` chooses the GPUs of a
run. (KFP 2.17 accepts a pipeline parameter in ``set_accelerator_limit``, but its compiler does
not pass that parameter into a ``ParallelFor``, where training sits; ``mammo lint`` reports it.)

Caching: ``fingerprint_data`` is never cached and feeds ``ingest`` the fingerprint of the input
trees, so the data steps are cache hits exactly when the data is unchanged. Retries: KFP cannot
retry on some exit codes only, so the steps whose failures are deterministic (ingest's reject
fraction, validate_data's critical expectations) are not retried; their storage I/O retries
in-process. ``mammo_pipeline`` (what ``kfp.local`` runs) is built from the paper profile without
retries: kfp.local honours ``set_retry`` with real sleeps, and a local failure should fail fast.
"""

# no `from __future__ import annotations`: KFP reads the pipeline signature's annotations as types
import math
from typing import List

from kfp import dsl, kubernetes

from mammo.components.balance_split.component import balance_split
from mammo.components.config import (ClusterConfig, Config, paper_config, run_config_dict,
                                     run_parameter_values)
from mammo.components.deploy.component import deploy
from mammo.components.evaluate.component import evaluate
from mammo.components.extract_patches.component import extract_patches
from mammo.components.ingest.component import ingest
from mammo.components.runtime import CPU_ENV
from mammo.components.select_and_gate.component import select_and_gate
from mammo.components.train.component import train
from mammo.components.validate_data.component import validate_data
from mammo.pipelines import kfp_local_fix
from mammo.pipelines.run_tasks import fingerprint_data, resolve_config, shard_indices

PIPELINE_NAME = "mammo-cbis-ddsm"
PIPELINE_DESCRIPTION = "CBIS-DDSM + DDSM normals -> gated, deployed 5-class patch classifier"
#: where a GCP key file from ``cluster.gcp_credentials_secret`` is mounted
GCP_KEY_DIR = "/var/secrets/google"
#: requests of the two helper tasks (they list objects / merge a dict)
HELPER_CPU, HELPER_MEMORY = "500m", "1Gi"


def build_pipeline(cfg: Config | None = None, *, retries: bool = True):
    """The pipeline function with ``cfg.cluster``'s compile-time settings and ``cfg`` as defaults.

    ``retries=False`` drops every ``set_retry`` (for kfp.local, which sleeps between retries).
    """
    cfg = cfg or paper_config()
    cl = cfg.cluster
    flat = run_parameter_values(cfg)
    retry_count = cl.retries if retries else 0

    @dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION, pipeline_root=cl.pipeline_root or None)
    def mammo_pipeline(
        data_uri: str,
        normals_uri: str,
        serving_root: str,
        backbones: List[str] = list(flat["backbones"]),
        auc_threshold: float = float(flat["auc_threshold"]),
        max_auc_drop: float = float(flat["max_auc_drop"]),
        balance_mode: str = flat["balance_mode"],
        image_size: int = int(flat["image_size"]),
        weights: str = flat["weights"],
        num_extract_shards: int = 1,
        config: dict = run_config_dict(cfg),
    ):
        """CBIS-DDSM + DDSM normals -> gated, deployed 5-class patch classifier.

        Args:
            data_uri: CBIS-DDSM root (gs://bucket/prefix or a path on the data volume) with the four description
                CSVs and the CBIS-DDSM/ image tree.
            normals_uri: DDSM normals root (gs:// or a path on the data volume).
            serving_root: the model repository TF Serving reads (gs://bucket/models or the models volume); deploy
                pushes a new integer version here.
            backbones: Keras backbones trained in parallel, one training task each (e.g. ["resnet50", "xception"]).
            auc_threshold: promotion gate: the selected model's test macro AUC must reach this value (0-1).
            max_auc_drop: promotion gate: the challenger may be at most this much below the served champion's test
                macro AUC.
            balance_mode: class balancing of the training split: undersample (the paper), oversample, class_weights
                or none.
            image_size: side in pixels of the stored patches (the paper: 331).
            weights: backbone initialisation: imagenet, none (random) or a weights file (path or gs://).
            num_extract_shards: number of parallel patch-extraction tasks (each takes a deterministic share of the
                images).
            config: every other setting (see components/config.py), a partial nested dict over the profile's
                defaults; must not set the parameters above or cluster.* (compile-time).
        """
        fingerprint_task = fingerprint_data(data_uri=data_uri, normals_uri=normals_uri)
        _helper(fingerprint_task.set_display_name("fingerprint_data"), cl, cache=False, data=True)
        resolve_task = resolve_config(config=config, backbones=backbones, auc_threshold=auc_threshold,
                                      max_auc_drop=max_auc_drop, balance_mode=balance_mode, image_size=image_size,
                                      weights=weights)
        _helper(resolve_task.set_display_name("resolve_config"), cl, cache=True)
        run_config = resolve_task.output
        shards_task = shard_indices(num_extract_shards=num_extract_shards)
        _helper(shards_task.set_display_name("shard_indices"), cl, cache=True)

        ingest_task = ingest(data_uri=data_uri, normals_uri=normals_uri, config=run_config,
                             data_fingerprint=fingerprint_task.output).set_display_name("ingest")
        _step(ingest_task, cl, "data", cache=True, data=True)  # not retried: see the module docstring
        validate_task = validate_data(cases=ingest_task.outputs["cases"], config=run_config)
        _step(validate_task.set_display_name("validate_data"), cl, "data", cache=True, data=True)

        with dsl.ParallelFor(shards_task.output, parallelism=cl.extract_parallelism,
                             name="extract-shards") as shard:
            extract_task = extract_patches(cases=ingest_task.outputs["cases"], config=run_config, shard_index=shard,
                                           num_shards=num_extract_shards).after(validate_task)
            _step(extract_task.set_display_name("extract_patches"), cl, "data", cache=True, data=True)
            _retry(extract_task, cl, retry_count)

        balance_task = balance_split(patches=dsl.Collected(extract_task.outputs["patches"]), config=run_config)
        _step(balance_task.set_display_name("balance_split"), cl, "data", cache=True)
        _retry(balance_task, cl, retry_count)

        with dsl.ParallelFor(backbones, parallelism=cl.train_parallelism, name="backbones") as backbone:
            train_task = train(dataset=balance_task.outputs["dataset"], backbone=backbone, config=run_config)
            _train_step(train_task.set_display_name("train"), cl, retries)
            evaluate_task = evaluate(model=train_task.outputs["model"], dataset=balance_task.outputs["dataset"],
                                     backbone=backbone, config=run_config, cases=ingest_task.outputs["cases"])
            _step(evaluate_task.set_display_name("evaluate"), cl, "eval", cache=True)
            _retry(evaluate_task, cl, retry_count)

        gate_task = select_and_gate(evaluations=dsl.Collected(evaluate_task.outputs["evaluation"]),
                                    models=dsl.Collected(train_task.outputs["model"]), config=run_config,
                                    serving_root=serving_root,
                                    dataset=balance_task.outputs["dataset"]).set_display_name("select_and_gate")
        # never cached: the decision depends on the champion being served now
        _step(gate_task, cl, "gate", cache=False, models=True)
        _retry(gate_task, cl, retry_count)

        with dsl.If(gate_task.outputs["Output"] == True, name="promoted"):  # noqa: E712 (KFP condition syntax)
            deploy_task = deploy(model=gate_task.outputs["selected_model"], decision=gate_task.outputs["decision"],
                                 config=run_config, serving_root=serving_root).set_display_name("deploy")
            # not cached, not retried: each attempt pushes a new serving version
            _step(deploy_task, cl, "gate", cache=False, models=True)

    return mammo_pipeline


# -- task settings -------------------------------------------------------------------------------


def cpu_cores(quantity: str) -> int:
    """Whole cores of a Kubernetes CPU quantity, at least 1 (``500m`` -> 1, ``6`` -> 6)."""
    text = str(quantity).strip()
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.floor(cores))


def _resources(task, cpu: str, memory: str, what: str) -> None:
    try:
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
        cores = cpu_cores(cpu)
    except ValueError as exc:
        raise ValueError(f"{what} is not a Kubernetes quantity (e.g. 4, 500m / 16Gi): {exc}") from None
    # worker pools size themselves from the request, not from the node's cores (runtime.available_cpus)
    task.set_env_variable(CPU_ENV, str(cores))


def _mounts(task, cl: ClusterConfig, *, data: bool = False, models: bool = False) -> None:
    if data and cl.data_pvc:
        kubernetes.mount_pvc(task, pvc_name=cl.data_pvc, mount_path=cl.data_mount)
    if models and cl.models_pvc:
        kubernetes.mount_pvc(task, pvc_name=cl.models_pvc, mount_path=cl.models_mount)
    if cl.gcp_credentials_secret:
        # a Kubernetes secret mounted as a file: the key never enters the pipeline spec or the config
        kubernetes.use_secret_as_volume(task, secret_name=cl.gcp_credentials_secret, mount_path=GCP_KEY_DIR)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCP_KEY_DIR}/key.json")


def _step(task, cl: ClusterConfig, group: str, *, cache: bool, data: bool = False, models: bool = False) -> None:
    """Requests (``cluster.<group>_cpu / _memory``), caching, volumes and credentials of every step."""
    cpu, memory = getattr(cl, f"{group}_cpu"), getattr(cl, f"{group}_memory")
    _resources(task, cpu, memory, f"cluster.{group}_cpu={cpu!r} / cluster.{group}_memory={memory!r}")
    task.set_caching_options(cache)
    _mounts(task, cl, data=data, models=models)


def _helper(task, cl: ClusterConfig, *, cache: bool, data: bool = False) -> None:
    _resources(task, HELPER_CPU, HELPER_MEMORY, "helper task requests")
    task.set_caching_options(cache)
    _mounts(task, cl, data=data)


def _retry(task, cl: ClusterConfig, count: int) -> None:
    if count > 0:
        task.set_retry(count, backoff_duration=cl.retry_backoff, backoff_factor=cl.retry_backoff_factor,
                       backoff_max_duration=cl.retry_backoff_max)


def _train_step(task, cl: ClusterConfig, retries: bool) -> None:
    """GPU, GPU type, toleration and a deadline; not cached (each run trains afresh).

    ``cluster.train_gpus = 0`` (the demo profile) compiles a CPU-only task: no accelerator, no
    GPU node selector, no toleration.
    """
    _step(task, cl, "train", cache=False)
    if cl.train_gpus > 0:
        task.set_accelerator_type(cl.accelerator).set_accelerator_limit(cl.train_gpus)
        if cl.gpu_type:
            kubernetes.add_node_selector(task, label_key=cl.gpu_node_label, label_value=cl.gpu_type)
        if cl.gpu_toleration:
            kubernetes.add_toleration(task, key=cl.gpu_toleration, operator="Exists", effect="NoSchedule")
    if cl.train_timeout_s > 0:
        kubernetes.set_timeout(task, cl.train_timeout_s)
    _retry(task, cl, cl.train_retries if retries else 0)


#: what kfp.local runs (``mammo run`` / ``mammo demo``); a run's arguments override the defaults
mammo_pipeline = build_pipeline(paper_config(), retries=False)
# kfp.local would hand the loops the loop item instead of resolve_config's output (kfp_local_fix)
kfp_local_fix.apply()


def pipeline_arguments(cfg: Config, data_uri: str, normals_uri: str, serving_root: str,
                       extract_shards: int = 1) -> dict:
    """Map a :class:`~mammo.components.config.Config` to the pipeline's parameters (flat + ``config``)."""
    if extract_shards < 1:
        raise ValueError(f"extract_shards must be >= 1, got {extract_shards}")
    return {
        "data_uri": data_uri,
        "normals_uri": normals_uri,
        "serving_root": serving_root,
        **run_parameter_values(cfg),
        "num_extract_shards": extract_shards,
        "config": run_config_dict(cfg),
    }


def compile_pipeline(out_file: str, cfg: Config | None = None, *, lint: bool = True) -> str:
    """Compile for a cluster: ``cfg.cluster`` sets resources, scheduling and retries; ``cfg`` the defaults.

    ``lint`` (default) checks the compiled file with :mod:`mammo.pipelines.lint` and removes it
    if the backend would reject it.
    """
    from pathlib import Path

    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(cfg or paper_config()), package_path=out_file)
    if lint:
        from mammo.pipelines.lint import lint_file

        problems = lint_file(out_file)
        if problems:
            Path(out_file).unlink()
            raise ValueError(f"the compiled pipeline breaks KFP backend rules ({len(problems)}):\n"
                             + "\n".join(str(p) for p in problems))
    return out_file
