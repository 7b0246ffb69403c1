"""The mammo pipeline: the whole DAG on one screen.

ingest -> validate_data -> extract_patches (ParallelFor shards) -> balance_split
       -> ParallelFor backbone: train (1 nvidia.com/gpu) -> evaluate
       -> select_and_gate (Collected) -> If promoted: deploy

KFP fixes a task's resources, scheduling, retries and a loop's parallelism when the pipeline is
compiled, so :func:`build_pipeline` reads them from a config's ``cluster`` section (see
:class:`~mammo.components.config.ClusterConfig`); everything else is the run's ``config``
parameter. ``mammo_pipeline`` (what ``kfp.local`` runs) is built from the paper profile without
retries: kfp.local honours ``set_retry`` with real sleeps, and a local failure should fail fast.
"""

# no `from __future__ import annotations`: KFP reads the pipeline signature's annotations as types
from kfp import dsl, kubernetes

from mammo.components.balance_split.component import balance_split
from mammo.components.config import ClusterConfig, Config, paper_config
from mammo.components.deploy.component import deploy
from mammo.components.evaluate.component import evaluate
from mammo.components.extract_patches.component import extract_patches
from mammo.components.ingest.component import ingest
from mammo.components.select_and_gate.component import select_and_gate
from mammo.components.train.component import train
from mammo.components.validate_data.component import validate_data

PIPELINE_NAME = "mammo-cbis-ddsm"
PIPELINE_DESCRIPTION = "CBIS-DDSM + DDSM normals -> gated, deployed 5-class patch classifier"
#: where a GCP key file from ``cluster.gcp_credentials_secret`` is mounted
GCP_KEY_DIR = "/var/secrets/google"


def build_pipeline(cfg: Config | None = None, *, retries: bool = True):
    """The pipeline function with ``cfg.cluster``'s compile-time settings and ``cfg`` as defaults.

    ``retries=False`` drops every ``set_retry`` (for kfp.local, which sleeps between retries).
    """
    cfg = cfg or paper_config()
    cl = cfg.cluster

    @dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION, pipeline_root=cl.pipeline_root or None)
    def mammo_pipeline(
        data_uri: str,
        normals_uri: str,
        serving_root: str,
        config: dict = cfg.to_dict(),
        backbones: list = list(cfg.train.backbones),
        extract_shards: list = [0],
        num_extract_shards: int = 1,
    ):
        ingest_task = ingest(data_uri=data_uri, normals_uri=normals_uri, config=config).set_display_name("ingest")
        _data_step(ingest_task, cl, retries)
        validate_task = validate_data(cases=ingest_task.outputs["cases"], config=config).set_display_name("validate_data")
        _data_step(validate_task, cl, retries)

        with dsl.ParallelFor(extract_shards, parallelism=cl.extract_parallelism, name="extract-shards") as shard:
            extract_task = extract_patches(cases=ingest_task.outputs["cases"], config=config, shard_index=shard,
                                           num_shards=num_extract_shards).after(validate_task).set_display_name("extract_patches")
            _data_step(extract_task, cl, retries)

        balance_task = balance_split(patches=dsl.Collected(extract_task.outputs["patches"]), config=config)
        _data_step(balance_task.set_display_name("balance_split"), cl, retries, mount_data=False)

        with dsl.ParallelFor(backbones, parallelism=cl.train_parallelism, name="backbones") as backbone:
            train_task = train(dataset=balance_task.outputs["dataset"], backbone=backbone, config=config)
            _train_step(train_task.set_display_name("train"), cl, retries)
            evaluate_task = evaluate(model=train_task.outputs["model"], dataset=balance_task.outputs["dataset"],
                                     backbone=backbone, config=config)
            _step(evaluate_task.set_display_name("evaluate"), cl, "eval", cache=True)
            _retry(evaluate_task, cl, cl.retries if retries else 0)

        gate_task = select_and_gate(evaluations=dsl.Collected(evaluate_task.outputs["evaluation"]),
                                    models=dsl.Collected(train_task.outputs["model"]), config=config,
                                    serving_root=serving_root).set_display_name("select_and_gate")
        # never cached: the decision depends on the champion being served now
        _step(gate_task, cl, "gate", cache=False, models=True)
        _retry(gate_task, cl, cl.retries if retries else 0)

        with dsl.If(gate_task.outputs["Output"] == True, name="promoted"):  # noqa: E712 (KFP condition syntax)
            deploy_task = deploy(model=gate_task.outputs["selected_model"], decision=gate_task.outputs["decision"],
                                 config=config, serving_root=serving_root).set_display_name("deploy")
            # not cached, not retried: each attempt pushes a new serving version
            _step(deploy_task, cl, "gate", cache=False, models=True)

    return mammo_pipeline


# -- task settings -------------------------------------------------------------------------------


def _step(task, cl: ClusterConfig, group: str, *, cache: bool, data: bool = False, models: bool = False) -> None:
    """Requests (``cluster.<group>_cpu / _memory``), caching, volumes and credentials of every step."""
    cpu, memory = getattr(cl, f"{group}_cpu"), getattr(cl, f"{group}_memory")
    try:
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    except ValueError as exc:
        raise ValueError(f"cluster.{group}_cpu={cpu!r} / cluster.{group}_memory={memory!r} is not a Kubernetes "
                         f"quantity (e.g. 4, 500m / 16Gi): {exc}") from None
    task.set_caching_options(cache)
    if data and cl.data_pvc:
        kubernetes.mount_pvc(task, pvc_name=cl.data_pvc, mount_path=cl.data_mount)
    if models and cl.models_pvc:
        kubernetes.mount_pvc(task, pvc_name=cl.models_pvc, mount_path=cl.models_mount)
    if cl.gcp_credentials_secret:
        # a Kubernetes secret mounted as a file: the key never enters the pipeline spec or the config
        kubernetes.use_secret_as_volume(task, secret_name=cl.gcp_credentials_secret, mount_path=GCP_KEY_DIR)
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCP_KEY_DIR}/key.json")


def _retry(task, cl: ClusterConfig, count: int) -> None:
    if count > 0:
        task.set_retry(count, backoff_duration=cl.retry_backoff, backoff_factor=cl.retry_backoff_factor,
                       backoff_max_duration=cl.retry_backoff_max)


def _data_step(task, cl: ClusterConfig, retries: bool, mount_data: bool = True) -> None:
    """Data steps are deterministic in their inputs: cached, and retried on transient failures (I/O)."""
    _step(task, cl, "data", cache=True, data=mount_data)
    _retry(task, cl, cl.retries if retries else 0)


def _train_step(task, cl: ClusterConfig, retries: bool) -> None:
    """GPU, GPU type, toleration and a deadline; not cached (each run trains afresh)."""
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


#: what kfp.local runs (``mammo run`` / ``mammo demo``); a run's ``config`` argument overrides the defaults
mammo_pipeline = build_pipeline(paper_config(), retries=False)


def pipeline_arguments(cfg: Config, data_uri: str, normals_uri: str, serving_root: str,
                       extract_shards: int = 1) -> dict:
    """Map a :class:`~mammo.components.config.Config` to the pipeline's parameters."""
    if extract_shards < 1:
        raise ValueError(f"extract_shards must be >= 1, got {extract_shards}")
    return {
        "data_uri": data_uri,
        "normals_uri": normals_uri,
        "serving_root": serving_root,
        "config": cfg.to_dict(),
        "backbones": list(cfg.train.backbones),
        "extract_shards": list(range(extract_shards)),
        "num_extract_shards": extract_shards,
    }


def compile_pipeline(out_file: str, cfg: Config | None = None) -> str:
    """Compile for a cluster: ``cfg.cluster`` sets resources, scheduling and retries; ``cfg`` the defaults."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(cfg or paper_config()), package_path=out_file)
    return out_file
