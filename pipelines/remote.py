"""Submitting and scheduling the pipeline on a Kubeflow Pipelines API server (``kfp.Client``)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from mammo.components.config import Config
from mammo.pipelines.pipeline import PIPELINE_NAME, compile_pipeline, pipeline_arguments

log = logging.getLogger(__name__)


def _client(host: str):
    import kfp

    return kfp.Client(host=host)


def submit_run(host: str, cfg: Config, data_uri: str, normals_uri: str, serving_root: str, experiment: str = "mammo",
               run_name: str | None = None, extract_shards: int = 4) -> str:
    """Compile and submit one run; returns the run id."""
    client = _client(host)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(str(Path(tmp) / "pipeline.yaml"))
        run = client.create_run_from_pipeline_package(
            package,
            arguments=pipeline_arguments(cfg, data_uri, normals_uri, serving_root, extract_shards),
            run_name=run_name or f"{PIPELINE_NAME}-{'-'.join(cfg.train.backbones)}"[:60],
            experiment_name=experiment,
        )
    log.info("submitted run %s", run.run_id)
    return run.run_id


def schedule_runs(host: str, cfg: Config, data_uri: str, normals_uri: str, serving_root: str, cron: str,
                  experiment: str = "mammo", job_name: str = "mammo-retrain", extract_shards: int = 4) -> str:
    """A recurring run (scheduled retraining) with a KFP 6-field cron expression; returns its id."""
    client = _client(host)
    exp = client.create_experiment(name=experiment)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(str(Path(tmp) / "pipeline.yaml"))
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            pipeline_package_path=package,
            params=pipeline_arguments(cfg, data_uri, normals_uri, serving_root, extract_shards),
        )
    return job.recurring_run_id
