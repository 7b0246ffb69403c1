"""Submitting and scheduling the pipeline on a Kubeflow Pipelines API server (``kfp.Client``).

Both commands compile the pipeline from the config profile (``cluster`` settings are compile-time),
upload it as a *version* of one pipeline (named after the package version and a hash of the
compiled spec, so re-submitting an unchanged pipeline reuses its version), create or reuse the
experiment, and then start a run or a recurring run that references that version, with the whole
config as the run's parameters. ``pipeline_root`` and ``service_account`` come from
``config.cluster`` and are set on each run.

KFP's cron has six fields, seconds first (robfig/cron): :func:`validate_cron` checks an
expression before any request is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mammo.components.config import Config
from mammo.pipelines.pipeline import PIPELINE_DESCRIPTION, PIPELINE_NAME, compile_pipeline, pipeline_arguments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """What ``mammo submit`` / ``mammo schedule`` created (ids as the API server returned them)."""

    experiment_id: str
    pipeline_id: str
    version_id: str
    version_name: str
    run_id: str = ""
    recurring_run_id: str = ""
    url: str = ""


# -- cron ----------------------------------------------------------------------------------------

_CRON_FIELDS = (  # name, low, high, names accepted for values
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}),
)
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_CRON_HELP = ("KFP cron has six fields, seconds first: second minute hour day-of-month month day-of-week "
              "(e.g. '0 0 3 * * 0' = 03:00 every Sunday), or a descriptor such as @daily / @every 24h")


def validate_cron(expr: str) -> str:
    """Return ``expr`` normalised (single spaces) if KFP's scheduler accepts it; else a clear ValueError."""
    text = " ".join(str(expr).split())
    if not text:
        raise ValueError(f"empty cron expression; {_CRON_HELP}")
    if text.startswith("@"):
        if text in _DESCRIPTORS:
            return text
        if text.startswith("@every "):
            duration = text[len("@every "):]
            if _GO_DURATION.match(duration):
                return text
            raise ValueError(f"cron {expr!r}: {duration!r} is not a duration like 30m, 12h or 1h30m")
        raise ValueError(f"cron {expr!r}: unknown descriptor; use one of {sorted(_DESCRIPTORS)} or @every <duration>")
    fields = text.split(" ")
    if len(fields) != 6:
        hint = f"; did you mean '0 {text}' (at second 0)?" if len(fields) == 5 else ""
        raise ValueError(f"cron {expr!r} has {len(fields)} fields: {_CRON_HELP}{hint}")
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        for part in value.split(","):
            _check_cron_part(expr, part, name, low, high, names)
    return text


def _check_cron_part(expr: str, part: str, name: str, low: int, high: int, names: dict[str, int]) -> None:
    def bad(why: str) -> ValueError:
        return ValueError(f"cron {expr!r}: {name} field {part!r} {why} (allowed {low}-{high}, *, ?, a-b, */n, lists)")

    def number(token: str) -> int:
        if token.lower() in names:
            return names[token.lower()]
        if not token.isdigit():
            raise bad(f"has {token!r}, not a number")
        n = int(token)
        if not low <= n <= high:
            raise bad(f"has {n}, out of range")
        return n

    rng, _, step = part.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise bad("has a step that is not a positive number")
    if rng in ("*", "?"):
        return
    if not rng:
        raise bad("is empty")
    start, dash, end = rng.partition("-")
    first = number(start)
    if dash and number(end) < first:
        raise bad("has a range that ends before it starts")


# -- client --------------------------------------------------------------------------------------


def _check_host(host: str) -> None:
    if not re.match(r"^https?://[^/\s]+", host):
        raise ValueError(f"--host {host!r} must be a URL such as http://localhost:8888 (the KFP API or UI address)")


def _client(host: str):
    """A ``kfp.Client`` for ``host`` (its constructor already asks the server's healthz)."""
    import kfp

    _check_host(host)
    return kfp.Client(host=host)


@contextmanager
def _api_errors(host: str):
    """Turn the HTTP layer's exceptions into one-line errors that name the server and the reason."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        body = (exc.body or b"").decode() if isinstance(exc.body, bytes) else str(exc.body or "")
        raise RuntimeError(f"the KFP API at {host} answered {exc.status} {exc.reason}: {body[:300]}") from exc
    except (urllib3.exceptions.HTTPError, TimeoutError) as exc:  # TimeoutError: kfp's healthz retries ran out
        raise RuntimeError(f"no Kubeflow Pipelines API answered at {host} ({type(exc).__name__}); is the "
                           "port-forward running (kubectl port-forward -n kubeflow svc/ml-pipeline 8888:8888)?") \
            from exc


def _package(cfg: Config, tmp: Path) -> tuple[Path, str]:
    """Compile with ``cfg`` and name the version after the package version and the spec's hash."""
    from importlib.metadata import PackageNotFoundError, version

    path = Path(compile_pipeline(str(tmp / "pipeline.yaml"), cfg))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    try:
        pkg = version("mammo")
    except PackageNotFoundError:  # pragma: no cover (running from a plain checkout)
        pkg = "dev"
    return path, f"{PIPELINE_NAME}-{pkg}-{digest}"


def _equals_filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def upload_version(client, package: Path, version_name: str, pipeline_name: str = PIPELINE_NAME) -> tuple[str, str]:
    """(pipeline id, version id) of ``version_name``; uploads the pipeline / version only if missing."""
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=pipeline_name, description=PIPELINE_DESCRIPTION)
        pipeline_id = pipeline.pipeline_id
        log.info("uploaded pipeline %s (%s)", pipeline_name, pipeline_id)
    found = client.list_pipeline_versions(pipeline_id, page_size=1, filter=_equals_filter("display_name", version_name))
    if found.pipeline_versions:
        version_id = found.pipeline_versions[0].pipeline_version_id
        log.info("reusing pipeline version %s (%s)", version_name, version_id)
        return pipeline_id, version_id
    uploaded = client.upload_pipeline_version(str(package), version_name, pipeline_id=pipeline_id,
                                              description=f"{PIPELINE_DESCRIPTION} (mammo compile)")
    log.info("uploaded pipeline version %s (%s)", version_name, uploaded.pipeline_version_id)
    return pipeline_id, uploaded.pipeline_version_id


def _prepare(host: str, cfg: Config, experiment: str):
    with tempfile.TemporaryDirectory() as tmp:
        package, version_name = _package(cfg, Path(tmp))  # a compile error stops us before any request
        client = _client(host)
        exp = client.create_experiment(name=experiment)  # gets the experiment if it exists
        pipeline_id, version_id = upload_version(client, package, version_name)
    return client, exp.experiment_id, pipeline_id, version_id, version_name


def _run_options(cfg: Config) -> dict:
    return {"pipeline_root": cfg.cluster.pipeline_root or None, "service_account": cfg.cluster.service_account or None}


def submit_run(host: str, cfg: Config, data_uri: str, normals_uri: str, serving_root: str, experiment: str = "mammo",
               run_name: str | None = None, extract_shards: int = 4) -> Submitted:
    """Upload the pipeline version and start one run of it with ``cfg`` as parameters."""
    _check_host(host)
    params = pipeline_arguments(cfg, data_uri, normals_uri, serving_root, extract_shards)
    with _api_errors(host):
        client, experiment_id, pipeline_id, version_id, version_name = _prepare(host, cfg, experiment)
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=run_name or f"{PIPELINE_NAME}-{'-'.join(cfg.train.backbones)}"[:60],
            params=params,
            pipeline_id=pipeline_id,
            version_id=version_id,
            **_run_options(cfg),
        )
    log.info("submitted run %s", run.run_id)
    return Submitted(experiment_id, pipeline_id, version_id, version_name, run_id=run.run_id,
                     url=f"{host.rstrip('/')}/#/runs/details/{run.run_id}")


def schedule_runs(host: str, cfg: Config, data_uri: str, normals_uri: str, serving_root: str, cron: str,
                  experiment: str = "mammo", job_name: str = "mammo-retrain", extract_shards: int = 4) -> Submitted:
    """A recurring run (scheduled retraining): one at a time, no catch-up of missed runs."""
    cron = validate_cron(cron)  # before any request
    _check_host(host)
    params = pipeline_arguments(cfg, data_uri, normals_uri, serving_root, extract_shards)
    with _api_errors(host):
        client, experiment_id, pipeline_id, version_id, version_name = _prepare(host, cfg, experiment)
        job = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            description=f"scheduled retraining ({cron})",
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=params,
            pipeline_id=pipeline_id,
            version_id=version_id,
            **_run_options(cfg),
        )
    log.info("created recurring run %s (%s)", job.recurring_run_id, cron)
    return Submitted(experiment_id, pipeline_id, version_id, version_name, recurring_run_id=job.recurring_run_id,
                     url=f"{host.rstrip('/')}/#/recurringrun/details/{job.recurring_run_id}")
