"""``mammo submit`` / ``mammo schedule`` through the real ``kfp.Client`` against a KFP API test double.

There is no Kubeflow cluster here, so :class:`KfpApiServerDouble` (a test double, not KFP) answers
the KFP v2beta1 REST routes that ``kfp.Client`` calls, on loopback, keeping experiments, pipelines,
versions, runs and recurring runs in memory and recording every request. Everything on the client
side is real: our compile, ``kfp.Client``, ``kfp_server_api`` and its urllib3 HTTP layer. The tests
assert the request bodies the server would receive.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from mammo.components.config import CPU_IMAGE, GPU_IMAGE, load_config
from mammo.pipelines.cli import main
from mammo.pipelines.pipeline import PIPELINE_NAME, pipeline_arguments
from mammo.pipelines.remote import schedule_runs, submit_run, validate_cron

API = "/apis/v2beta1"


class KfpApiServerDouble:
    """Test double of the KFP API server (v2beta1 REST), enough for upload / run / recurring run.

    It checks what a real server would reject (unknown experiment or pipeline version, a duplicate
    version name, an upload that is not a pipeline spec) and answers 404 to any other route.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.errors: list[str] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}  # version id -> version (with "spec": the uploaded YAML)
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output quiet
                pass

            def do_GET(self):
                double._handle(self, "GET")

            def do_POST(self):
                double._handle(self, "POST")

            def do_DELETE(self):
                double._handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "KfpApiServerDouble":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- routing ----------------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        record = {"method": method, "path": url.path, "query": query, "content_type": handler.headers.get("Content-Type"),
                  "authorization": handler.headers.get("Authorization")}
        with self._lock:
            if raw and record["content_type"].startswith("application/json"):
                record["body"] = json.loads(raw)
            elif raw:
                record["files"] = _multipart_files(raw, record["content_type"])
            self.requests.append(record)
            try:
                status, payload = self._route(method, url.path, query, record)
            except Exception as exc:  # a surprise in the double: fail the test, not the connection
                self.errors.append(f"{method} {handler.path}: {exc!r}")
                status, payload = 500, {"error": repr(exc)}
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _route(self, method: str, path: str, query: dict, record: dict) -> tuple[int, dict]:
        parts = path[len(API):].strip("/").split("/") if path.startswith(API) else []
        if method == "GET" and parts == ["healthz"]:
            return 200, {"multi_user": False, "pipeline_store": "database"}
        if parts == ["experiments"]:
            if method == "GET":
                return 200, _listed("experiments", self.experiments.values(), query)
            exp = {**record["body"], "experiment_id": self._new_id("exp"), "storage_state": "AVAILABLE"}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if parts == ["pipelines"] and method == "GET":
            return 200, _listed("pipelines", self.pipelines.values(), query)
        if parts == ["pipelines", "upload"] and method == "POST":
            spec = self._spec(record)
            if spec is None:
                return 400, {"error": "uploadfile is not a pipeline spec"}
            if any(p["display_name"] == query["name"] for p in self.pipelines.values()):
                return 409, {"error": f"pipeline {query['name']} exists"}
            pipeline = {"pipeline_id": self._new_id("pipeline"), "display_name": query["name"],
                        "description": query.get("description", "")}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self._add_version(pipeline["pipeline_id"], query["name"], spec)  # KFP's default version
            return 200, pipeline
        if parts == ["pipelines", "upload_version"] and method == "POST":
            spec = self._spec(record)
            pipeline_id = query.get("pipelineid")
            if spec is None or pipeline_id not in self.pipelines:
                return 400, {"error": "bad upload_version"}
            if any(v["pipeline_id"] == pipeline_id and v["display_name"] == query["name"] for v in self.versions.values()):
                return 409, {"error": f"version {query['name']} exists"}
            return 200, _public(self._add_version(pipeline_id, query["name"], spec))
        if len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions" and method == "GET":
            mine = [_public(v) for v in self.versions.values() if v["pipeline_id"] == parts[1]]
            return 200, _listed("pipeline_versions", mine, query)
        if parts == ["runs"] and method == "POST":
            error = self._check_references(record["body"])
            if error:
                return 400, {"error": error}
            run = {**record["body"], "run_id": self._new_id("run"), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if parts == ["recurringruns"] and method == "GET":
            mine = [j for j in self.recurring_runs.values() if j["experiment_id"] == query.get("experiment_id")]
            return 200, _listed("recurringRuns", mine, query)
        if len(parts) == 2 and parts[0] == "recurringruns" and method == "DELETE":
            if self.recurring_runs.pop(parts[1], None) is None:
                return 404, {"error": f"no recurring run {parts[1]}"}
            return 200, {}
        if parts == ["recurringruns"] and method == "POST":
            error = self._check_references(record["body"])
            if error:
                return 400, {"error": error}
            job = {**record["body"], "recurring_run_id": self._new_id("recurring"), "status": "ENABLED"}
            self.recurring_runs[job["recurring_run_id"]] = job
            return 200, job
        return 404, {"error": f"the test double has no route {method} {path}"}

    # -- state helpers ----------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _add_version(self, pipeline_id: str, name: str, spec: dict) -> dict:
        version = {"pipeline_version_id": self._new_id("version"), "pipeline_id": pipeline_id, "display_name": name,
                   "spec": spec}
        self.versions[version["pipeline_version_id"]] = version
        return version

    @staticmethod
    def _spec(record: dict) -> dict | None:
        data = (record.get("files") or {}).get("uploadfile")
        docs = list(yaml.safe_load_all(data)) if data else []
        if not docs or "pipelineInfo" not in docs[0] or "deploymentSpec" not in docs[0]:
            return None
        return {"pipeline": docs[0], "platform": docs[1] if len(docs) > 1 else {}}

    def _check_references(self, body: dict) -> str:
        if body.get("experiment_id") not in self.experiments:
            return f"unknown experiment {body.get('experiment_id')}"
        ref = body.get("pipeline_version_reference") or {}
        version = self.versions.get(ref.get("pipeline_version_id"))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            return f"unknown pipeline version {ref}"
        return ""

    def calls(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]

    def posted(self, route: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == API + route]


def _public(version: dict) -> dict:
    return {k: v for k, v in version.items() if k != "spec"}


def _listed(key: str, items, query: dict) -> dict:
    found = list(items)
    if query.get("filter"):
        for predicate in json.loads(query["filter"])["predicates"]:
            # filter.proto's Operation enum: kfp.Client sends the number, JSON may name it
            assert predicate["operation"] in (1, "EQUALS"), f"the test double only knows EQUALS: {predicate}"
            found = [i for i in found if str(i.get(predicate["key"])) == predicate["stringValue"]]
    return {key: found, "total_size": len(found)} if found else {}


def _multipart_files(raw: bytes, content_type: str) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def compile_once_per_config(tmp_path_factory):
    """Each distinct config is compiled once per module by the real compiler; later submits of the
    same config get a copy of that file (the spec's bytes, hence the version name, are the same)."""
    from mammo.pipelines import remote

    real, cache = remote.compile_pipeline, {}

    def compile_cached(out_file: str, cfg=None, **kw) -> str:
        key = repr(cfg)
        if key not in cache:
            cache[key] = Path(real(str(tmp_path_factory.mktemp("compiled") / "pipeline.yaml"), cfg, **kw))
        shutil.copyfile(cache[key], out_file)
        return out_file

    patch = pytest.MonkeyPatch()
    patch.setattr(remote, "compile_pipeline", compile_cached)
    yield
    patch.undo()


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    """A fresh test double; kfp.Client kept away from any ~/.config/kfp/context.json of this machine."""
    import kfp.client.client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "no-context.json"))
    for var in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    with KfpApiServerDouble() as server:
        yield server
    assert not server.errors, server.errors


def _cfg(*overrides: str):
    return load_config("demo", None, list(overrides))


DATA, NORMALS, SERVING = "gs://bucket/cbis", "gs://bucket/normals", "gs://bucket/models"


# -- submit -----------------------------------------------------------------------------------------


def test_submit_creates_experiment_uploads_pipeline_and_runs_its_version_with_profile_parameters(kfp_api):
    cfg = _cfg("cluster.train_gpus=1", "cluster.gpu_type=nvidia-l4", "cluster.pipeline_root=gs://bucket/kfp-root",
               "cluster.service_account=mammo-pipeline")
    done = submit_run(kfp_api.url, cfg, DATA, NORMALS, SERVING, experiment="mammo-test", run_name="r1",
                      extract_shards=3)

    assert kfp_api.calls() == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/experiments"),  # get by name ...
        ("POST", f"{API}/experiments"),  # ... else create
        ("GET", f"{API}/pipelines"),  # pipeline by name
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/{done.pipeline_id}/versions"),  # version by name
        ("POST", f"{API}/pipelines/upload_version"),
        ("POST", f"{API}/runs"),
    ]
    assert kfp_api.posted("/experiments")[0]["body"]["display_name"] == "mammo-test"
    upload = kfp_api.posted("/pipelines/upload")[0]
    assert upload["query"]["name"] == PIPELINE_NAME and upload["content_type"].startswith("multipart/form-data")
    version_upload = kfp_api.posted("/pipelines/upload_version")[0]["query"]
    assert version_upload["pipelineid"] == done.pipeline_id and version_upload["name"] == done.version_name
    assert done.version_name.startswith(f"{PIPELINE_NAME}-0.1.0-")

    (run,) = [r["body"] for r in kfp_api.posted("/runs")]
    assert run["display_name"] == "r1"  # a given name is used as is
    assert run["experiment_id"] == done.experiment_id
    assert run["pipeline_version_reference"] == {"pipeline_id": done.pipeline_id, "pipeline_version_id": done.version_id}
    assert "pipeline_spec" not in run  # the run references the uploaded version
    assert run["runtime_config"]["parameters"] == pipeline_arguments(cfg, DATA, NORMALS, SERVING, 3)
    assert run["runtime_config"]["parameters"]["backbones"] == ["mobilenetv3small"]
    assert "backbones" not in run["runtime_config"]["parameters"]["config"]["train"]  # one place per setting
    assert "cluster" not in run["runtime_config"]["parameters"]["config"]
    assert run["runtime_config"]["pipeline_root"] == "gs://bucket/kfp-root"
    assert run["service_account"] == "mammo-pipeline"
    assert done.run_id == next(iter(kfp_api.runs)) and done.url.endswith(f"/#/runs/details/{done.run_id}")

    # the uploaded version is the pipeline compiled with the profile's cluster settings and our images
    spec = kfp_api.versions[done.version_id]["spec"]
    assert spec["pipeline"]["defaultPipelineRoot"] == "gs://bucket/kfp-root"
    executors = spec["pipeline"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["container"]["image"] == GPU_IMAGE
    assert executors["exec-ingest"]["container"]["image"] == CPU_IMAGE
    k8s = spec["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "nvidia-l4"}


def test_second_submit_reuses_experiment_pipeline_and_version(kfp_api):
    cfg = _cfg()
    first = submit_run(kfp_api.url, cfg, DATA, NORMALS, SERVING)
    second = submit_run(kfp_api.url, cfg, DATA, NORMALS, SERVING)

    assert len(kfp_api.posted("/experiments")) == 1
    assert len(kfp_api.posted("/pipelines/upload")) == 1
    assert len(kfp_api.posted("/pipelines/upload_version")) == 1  # same compiled spec: same version
    assert (second.experiment_id, second.pipeline_id, second.version_id) == (
        first.experiment_id, first.pipeline_id, first.version_id)
    assert len(kfp_api.runs) == 2 and first.run_id != second.run_id


def test_changed_cluster_setting_uploads_a_new_version_of_the_same_pipeline(kfp_api):
    first = submit_run(kfp_api.url, _cfg(), DATA, NORMALS, SERVING)
    second = submit_run(kfp_api.url, _cfg("cluster.train_memory=64Gi"), DATA, NORMALS, SERVING)

    assert second.pipeline_id == first.pipeline_id
    assert second.version_id != first.version_id and second.version_name != first.version_name
    spec = kfp_api.versions[second.version_id]["spec"]["pipeline"]
    assert spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["resourceMemoryRequest"] == "64Gi"


def test_cli_submit_prints_run_and_uses_profile_and_overrides(kfp_api, capsys):
    rc = main(["submit", "--host", kfp_api.url, "--data", DATA, "--normals", NORMALS, "--serving-root", SERVING,
               "--profile", "demo", "--set", "gate.auc_threshold=0.8", "--extract-shards", "2"])
    assert rc == 0
    (run,) = kfp_api.runs.values()
    params = run["runtime_config"]["parameters"]
    assert params["auc_threshold"] == 0.8 and "auc_threshold" not in params["config"]["gate"]
    assert params["num_extract_shards"] == 2 and "extract_shards" not in params
    assert "pipeline_root" not in run["runtime_config"] and "service_account" not in run  # cluster defaults
    assert f"submitted run {run['run_id']}" in capsys.readouterr().out


def test_host_without_scheme_is_refused_before_any_request(kfp_api):
    with pytest.raises(ValueError, match="must be a URL"):
        submit_run(kfp_api.url.replace("http://", ""), _cfg(), DATA, NORMALS, SERVING)
    assert kfp_api.requests == []


# -- schedule ---------------------------------------------------------------------------------------


def test_schedule_creates_recurring_run_one_at_a_time_without_catchup(kfp_api):
    cfg = _cfg("cluster.service_account=mammo-pipeline")
    done = schedule_runs(kfp_api.url, cfg, DATA, NORMALS, SERVING, cron="0 0 3 * * 0", job_name="weekly")

    assert [c for c in kfp_api.calls() if c[0] == "POST"] == [
        ("POST", f"{API}/experiments"), ("POST", f"{API}/pipelines/upload"),
        ("POST", f"{API}/pipelines/upload_version"), ("POST", f"{API}/recurringruns")]
    (job,) = [r["body"] for r in kfp_api.posted("/recurringruns")]
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert int(job["max_concurrency"]) == 1
    assert job["no_catchup"] is True
    assert job["mode"] == "ENABLE"
    assert job["display_name"] == "weekly"
    assert job["service_account"] == "mammo-pipeline"
    assert job["pipeline_version_reference"] == {"pipeline_id": done.pipeline_id, "pipeline_version_id": done.version_id}
    assert job["runtime_config"]["parameters"] == pipeline_arguments(cfg, DATA, NORMALS, SERVING, 4)
    assert done.recurring_run_id in kfp_api.recurring_runs


def test_cli_schedule_then_submit_share_one_pipeline_version(kfp_api, capsys):
    common = ["--host", kfp_api.url, "--data", DATA, "--normals", NORMALS, "--serving-root", SERVING, "--profile", "demo"]
    assert main(["schedule", *common, "--cron", "0 30 2 * * MON-FRI"]) == 0
    assert main(["submit", *common]) == 0
    assert len(kfp_api.posted("/pipelines/upload_version")) == 1
    (job,) = kfp_api.recurring_runs.values()
    (run,) = kfp_api.runs.values()
    assert job["pipeline_version_reference"] == run["pipeline_version_reference"]
    assert "scheduled recurring run" in capsys.readouterr().out


@pytest.mark.parametrize(
    "cron, message",
    [
        ("0 3 * * 0", r"has 5 fields.*six fields, seconds first.*did you mean '0 0 3 \* \* 0'"),
        ("0 0 3 * * 0 2026", "has 7 fields"),
        ("0 0 24 * * *", "hour field '24' has 24, out of range"),
        ("0 60 3 * * *", "minute field '60'"),
        ("0 0 3 0 * *", "day-of-month field '0'"),
        ("0 0 3 * 13 *", "month field '13'"),
        ("0 0 3 * * 7", "day-of-week field '7'"),
        ("0 0 3 * * FUNDAY", "day-of-week field 'FUNDAY' has 'FUNDAY', not a number"),
        ("*/0 * * * * *", "step that is not a positive number"),
        ("0 0 5-3 * * *", "ends before it starts"),
        ("0 0 3,,4 * * *", "is empty"),
        ("@fortnightly", "unknown descriptor"),
        ("@every soon", "not a duration"),
        ("", "empty cron expression"),
    ],
)
def test_bad_cron_is_refused_with_a_clear_error_before_any_request(kfp_api, cron, message):
    with pytest.raises(ValueError, match=message):
        schedule_runs(kfp_api.url, _cfg(), DATA, NORMALS, SERVING, cron=cron)
    assert kfp_api.requests == []


def test_cli_bad_cron_exits_nonzero_with_the_reason_and_sends_nothing(kfp_api, capsys):
    rc = main(["schedule", "--host", kfp_api.url, "--data", DATA, "--normals", NORMALS, "--serving-root", SERVING,
               "--cron", "0 3 * * 0"])
    assert rc == 1
    assert "KFP cron has six fields, seconds first" in capsys.readouterr().err
    assert kfp_api.requests == []


@pytest.mark.parametrize("cron", ["0 0 3 * * 0", "0  0 3 * * SUN", "*/30 * * * * ?", "0 0 9 ? * 2-6",
                                  "0 0 0 1 JAN,JUL *", "0 15 1-23/2 * * *", "@daily", "@every 1h30m"])
def test_valid_kfp_cron_expressions_are_accepted(cron):
    assert validate_cron(cron) == " ".join(cron.split())


def test_schedule_twice_replaces_the_recurring_run_of_the_same_name(kfp_api, capsys):
    first = schedule_runs(kfp_api.url, _cfg(), DATA, NORMALS, SERVING, cron="0 0 3 * * 0", job_name="weekly")
    other = schedule_runs(kfp_api.url, _cfg(), DATA, NORMALS, SERVING, cron="0 0 1 * * *", job_name="nightly")
    second = schedule_runs(kfp_api.url, _cfg("gate.auc_threshold=0.8"), DATA, NORMALS, SERVING, cron="0 0 4 * * 0",
                           job_name="weekly")

    assert second.replaced == (first.recurring_run_id,) and first.replaced == () and other.replaced == ()
    assert set(kfp_api.recurring_runs) == {other.recurring_run_id, second.recurring_run_id}
    weekly = kfp_api.recurring_runs[second.recurring_run_id]
    assert weekly["trigger"] == {"cron_schedule": {"cron": "0 0 4 * * 0"}}
    assert weekly["runtime_config"]["parameters"]["auc_threshold"] == 0.8
    deletes = [c for c in kfp_api.calls() if c[0] == "DELETE"]
    assert deletes == [("DELETE", f"{API}/recurringruns/{first.recurring_run_id}")]

    common = ["--host", kfp_api.url, "--data", DATA, "--normals", NORMALS, "--serving-root", SERVING, "--profile", "demo"]
    assert main(["schedule", *common, "--cron", "0 0 5 * * 0", "--job-name", "weekly"]) == 0
    assert f"replaced the recurring run(s) named weekly: {second.recurring_run_id}" in capsys.readouterr().out
    assert len([j for j in kfp_api.recurring_runs.values() if j["display_name"] == "weekly"]) == 1


def test_runs_without_a_name_get_unique_names(kfp_api):
    names = {submit_run(kfp_api.url, _cfg(), DATA, NORMALS, SERVING).run_id: None for _ in range(3)}
    displayed = [r["display_name"] for r in kfp_api.runs.values()]
    assert len(names) == 3 and len(set(displayed)) == 3
    assert all(re.fullmatch(r"mammo-mobilenetv3small-\d{8}-\d{6}-[0-9a-f]{4}", n) for n in displayed), displayed


def test_namespace_and_token_reach_the_api(kfp_api, monkeypatch):
    from mammo.pipelines.remote import Auth

    done = submit_run(kfp_api.url, _cfg(), DATA, NORMALS, SERVING, experiment="team",
                      auth=Auth(namespace="kubeflow-user-example-com", token="tok-123"))
    exp = kfp_api.posted("/experiments")[0]["body"]
    assert exp["namespace"] == "kubeflow-user-example-com"
    assert {r["authorization"] for r in kfp_api.requests} == {"Bearer tok-123"}
    assert done.run_id in kfp_api.runs

    monkeypatch.setenv("KF_PIPELINES_TOKEN", "from-env")
    assert Auth.from_env("ns").client_kwargs() == {"namespace": "ns", "existing_token": "from-env"}
    with pytest.raises(ValueError, match="give one of"):
        Auth(token="a", in_cluster=True).client_kwargs()


def test_cli_token_file_and_namespace(kfp_api, tmp_path):
    token = tmp_path / "token"
    token.write_text("file-token\n")
    assert main(["submit", "--host", kfp_api.url, "--data", DATA, "--normals", NORMALS, "--serving-root", SERVING,
                 "--profile", "demo", "--namespace", "team-a", "--token-file", str(token)]) == 0
    assert kfp_api.posted("/experiments")[0]["body"]["namespace"] == "team-a"
    assert {r["authorization"] for r in kfp_api.requests} == {"Bearer file-token"}


# -- errors -----------------------------------------------------------------------------------------


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:  # a loopback port with nothing listening once closed
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_no_server_at_host_gives_a_one_line_error_naming_the_port_forward(kfp_api):
    closed = _closed_port_url()
    with pytest.raises(RuntimeError, match=rf"no Kubeflow Pipelines API answered at {closed}.*port-forward"):
        submit_run(closed, _cfg(), DATA, NORMALS, SERVING)


def test_server_refusal_is_reported_with_status_and_reason(kfp_api, monkeypatch):
    monkeypatch.setattr(KfpApiServerDouble, "_check_references", lambda self, body: "experiment is archived")
    with pytest.raises(RuntimeError, match=r"answered 400 Bad Request: .*experiment is archived"):
        submit_run(kfp_api.url, _cfg(), DATA, NORMALS, SERVING)
    assert not kfp_api.runs


def test_cli_reports_an_unreachable_server_without_a_traceback(capsys):
    closed = _closed_port_url()
    rc = main(["submit", "--host", closed, "--data", DATA, "--normals", NORMALS,
               "--serving-root", SERVING, "--profile", "demo"])
    err = capsys.readouterr().err
    assert rc == 1 and f"no Kubeflow Pipelines API answered at {closed}" in err
    assert "Traceback" not in err
