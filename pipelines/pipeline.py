"""The mammo pipeline: the whole DAG on one screen.

ingest -> validate_data -> extract_patches (ParallelFor shards) -> balance_split
       -> ParallelFor backbone: train (1 nvidia.com/gpu) -> evaluate
       -> select_and_gate (Collected) -> If promoted: deploy
"""


from kfp import dsl, kubernetes

from mammo.components.balance.component import balance_op
from mammo.components.config import paper_config
from mammo.components.deploy.component import deploy_op
from mammo.components.evaluate.component import evaluate_op
from mammo.components.extract.component import extract_op
from mammo.components.gate.component import select_and_gate_op
from mammo.components.ingest.component import ingest_op
from mammo.components.train.component import train_op
from mammo.components.validate.component import validate_op

PIPELINE_NAME = "mammo-cbis-ddsm"

#: resources of the training pods (one GPU each); data steps get modest CPU pods
TRAIN_CPU, TRAIN_MEMORY = "8", "32G"
DATA_CPU, DATA_MEMORY = "4", "16G"


@dsl.pipeline(name=PIPELINE_NAME, description="CBIS-DDSM + DDSM normals -> gated, deployed 5-class patch classifier")
def mammo_pipeline(
    data_uri: str,
    normals_uri: str,
    serving_root: str,
    config: dict = paper_config().to_dict(),
    backbones: list = paper_config().train.backbones,
    extract_shards: list = [0],
    num_extract_shards: int = 1,
):
    ingest = ingest_op(data_uri=data_uri, normals_uri=normals_uri, config=config).set_display_name("ingest")
    validate = validate_op(cases=ingest.outputs["cases"], config=config).set_display_name("validate_data")

    with dsl.ParallelFor(extract_shards, name="extract-shards") as shard:
        extract = extract_op(cases=ingest.outputs["cases"], config=config, shard_index=shard,
                             num_shards=num_extract_shards).after(validate).set_display_name("extract_patches")
        extract.set_cpu_request(DATA_CPU).set_memory_request(DATA_MEMORY)

    balance = balance_op(patches=dsl.Collected(extract.outputs["patches"]), config=config)
    balance.set_display_name("balance_split")

    with dsl.ParallelFor(backbones, name="backbones") as backbone:
        train = train_op(dataset=balance.outputs["dataset"], backbone=backbone, config=config)
        train.set_display_name("train").set_caching_options(False)
        train.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        train.set_cpu_request(TRAIN_CPU).set_memory_request(TRAIN_MEMORY)
        kubernetes.add_toleration(train, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        evaluate = evaluate_op(model=train.outputs["model"], dataset=balance.outputs["dataset"], backbone=backbone)
        evaluate.set_display_name("evaluate")

    gate = select_and_gate_op(evaluations=dsl.Collected(evaluate.outputs["evaluation"]),
                              models=dsl.Collected(train.outputs["model"]), config=config,
                              serving_root=serving_root).set_display_name("select_and_gate")
    gate.set_caching_options(False)

    with dsl.If(gate.outputs["Output"] == True, name="promoted"):  # noqa: E712 (KFP condition syntax)
        deploy = deploy_op(model=gate.outputs["selected_model"], decision=gate.outputs["decision"], config=config,
                           serving_root=serving_root).set_display_name("deploy")
        deploy.set_caching_options(False)


def pipeline_arguments(cfg, data_uri: str, normals_uri: str, serving_root: str, extract_shards: int = 1) -> dict:
    """Map a :class:`~mammo.components.config.Config` to the pipeline's parameters."""
    return {
        "data_uri": data_uri,
        "normals_uri": normals_uri,
        "serving_root": serving_root,
        "config": cfg.to_dict(),
        "backbones": list(cfg.train.backbones),
        "extract_shards": list(range(extract_shards)),
        "num_extract_shards": extract_shards,
    }


def compile_pipeline(out_file: str) -> str:
    from kfp import compiler

    compiler.Compiler().compile(mammo_pipeline, package_path=out_file)
    return out_file
