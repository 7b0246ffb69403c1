"""Submitting and scheduling the pipeline on a Kubeflow Pipelines API server (``kfp.Client``).

Both commands compile the pipeline from the config profile (``cluster`` settings are compile-time),
upload it as a *version* of one pipeline (named after the package version and a hash of the
compiled spec, so re-submitting an unchanged pipeline reuses its version), create or reuse the
experiment, and then start a run or a recurring run that references that version, with the whole
config as the run's parameters (:func:`~mammo.pipelines.pipeline.pipeline_arguments`: the flat run
parameters and ``config``). ``pipeline_root`` and ``service_account`` come from ``config.cluster``
and are set on each run.

Multi-user Kubeflow: ``namespace`` puts the experiment (and so its runs) in a profile namespace;
:class:`Auth` authenticates: a bearer token (``--token`` / ``KF_PIPELINES_TOKEN``, e.g. from
``kubectl create token``), a token file, or the pod's service-account token (inside the cluster).
Run names are unique (name, backbones, UTC time, a random suffix). ``schedule`` is idempotent: a
recurring run of the same name in the experiment is replaced (deleted, then created with the new
version, cron and parameters), so running it twice leaves one schedule.

KFP's cron has six fields, seconds first (robfig/cron): :func:`validate_cron` checks an
expression before any request is sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
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
    #: ids of the recurring runs of the same name that ``schedule`` replaced
    replaced: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class Auth:
    """How to reach a (multi-user) KFP API: namespace and credentials; all empty = single-user KFP.

    ``token``: a bearer token (``kubectl create token <sa> -n <namespace>``, or an OIDC token);
    ``token_file``: a file holding one; ``in_cluster``: the pod's projected service-account token
    (``kfp.client.ServiceAccountTokenVolumeCredentials``), for submitting from a notebook or pod.
    """

    namespace: str = ""
    token: str = ""
    token_file: str = ""
    in_cluster: bool = False

    @classmethod
    def from_env(cls, namespace: str = "", token: str = "", token_file: str = "", in_cluster: bool = False) -> "Auth":
        """Command-line values, the token falling back to ``KF_PIPELINES_TOKEN`` (kept out of shell history)."""
        return cls(namespace, token or os.environ.get("KF_PIPELINES_TOKEN", ""), token_file, in_cluster)

    def client_kwargs(self) -> dict:
        if sum(map(bool, (self.token, self.token_file, self.in_cluster))) > 1:
            raise ValueError("give one of --token, --token-file, --in-cluster-credentials")
        kwargs: dict = {}
        if self.namespace:
            kwargs["namespace"] = self.namespace
        if self.token:
            kwargs["existing_token"] = self.token
        elif self.token_file:
            try:
                kwargs["existing_token"] = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise ValueError(f"--token-file {self.token_file}: {exc.strerror}") from None
        elif self.in_cluster:
            from kfp.client import ServiceAccountTokenVolumeCredentials

            kwargs["credentials"] = ServiceAccountTokenVolumeCredentials()
        return kwargs


def _client(host: str, auth: Auth | None = None):
    """A ``kfp.Client`` for ``host`` (its constructor already asks the server's healthz)."""
    import kfp

    _check_host(host)
    return kfp.Client(host=host, **(auth or Auth()).client_kwargs())


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


def _prepare(host: str, cfg: Config, experiment: str, auth: Auth | None = None):
    auth = auth or Auth()
    with tempfile.TemporaryDirectory() as tmp:
        package, version_name = _package(cfg, Path(tmp))  # a compile error stops us before any request
        client = _client(host, auth)
        # gets the experiment if it exists; in a profile namespace on multi-user Kubeflow
        exp = client.create_experiment(name=experiment, namespace=auth.namespace or None)
        pipeline_id, version_id = upload_version(client, package, version_name)
    return client, exp.experiment_id, pipeline_id, version_id, version_name


def _run_options(cfg: Config) -> dict:
    return {"pipeline_root": cfg.cluster.pipeline_root or None, "service_account": cfg.cluster.service_account or None}


def unique_run_name(cfg: Config, now: datetime | None = None) -> str:
    """``mammo-<backbones>-<UTC yyyymmdd-hhmmss>-<4 hex>``: unique, sortable, says what was trained."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    backbones = "-".join(cfg.train.backbones)[:40]
    return f"mammo-{backbones}-{stamp}-{secrets.token_hex(2)}"


def submit_run(host: str, cfg: Config, data_uri: str, normals_uri: str, serving_root: str, experiment: str = "mammo",
               run_name: str | None = None, extract_shards: int = 4, auth: Auth | None = None) -> Submitted:
    """Upload the pipeline version and start one run of it with ``cfg`` as parameters.

    ``run_name`` is used as given; without one the run gets :func:`unique_run_name`.
    """
    _check_host(host)
    params = pipeline_arguments(cfg, data_uri, normals_uri, serving_root, extract_shards)
    with _api_errors(host):
        client, experiment_id, pipeline_id, version_id, version_name = _prepare(host, cfg, experiment, auth)
        run = client.run_pipeline(
            experiment_id=experiment_id,
            job_name=run_name or unique_run_name(cfg),
            params=params,
            pipeline_id=pipeline_id,
            version_id=version_id,
            **_run_options(cfg),
        )
    log.info("submitted run %s", run.run_id)
    return Submitted(experiment_id, pipeline_id, version_id, version_name, run_id=run.run_id,
                     url=f"{host.rstrip('/')}/#/runs/details/{run.run_id}")


def schedule_runs(host: str, cfg: Config, data_uri: str, normals_uri: str, serving_root: str, cron: str,
                  experiment: str = "mammo", job_name: str = "mammo-retrain", extract_shards: int = 4,
                  auth: Auth | None = None) -> Submitted:
    """A recurring run (scheduled retraining): one at a time, no catch-up of missed runs.

    Idempotent: recurring runs named ``job_name`` in the experiment are replaced by this one (the
    KFP API cannot edit a recurring run's cron, version or parameters), so a second ``schedule``
    leaves one schedule, with the new settings.
    """
    cron = validate_cron(cron)  # before any request
    _check_host(host)
    params = pipeline_arguments(cfg, data_uri, normals_uri, serving_root, extract_shards)
    with _api_errors(host):
        client, experiment_id, pipeline_id, version_id, version_name = _prepare(host, cfg, experiment, auth)
        replaced = _existing_recurring_runs(client, experiment_id, job_name)
        for old in replaced:
            client.delete_recurring_run(old)
            log.info("replacing recurring run %s (%s)", job_name, old)
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
                     replaced=tuple(replaced),
                     url=f"{host.rstrip('/')}/#/recurringrun/details/{job.recurring_run_id}")


def _existing_recurring_runs(client, experiment_id: str, job_name: str) -> list[str]:
    """Ids of the experiment's recurring runs whose display name is ``job_name`` (every page)."""
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=100, experiment_id=experiment_id,
                                          filter=_equals_filter("display_name", job_name))
        found += [r.recurring_run_id for r in (page.recurring_runs or []) if r.display_name == job_name]
        token = page.next_page_token or ""
        if not token:
            return found
