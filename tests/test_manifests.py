"""The Kubernetes manifests: rendered by the real kustomize, validated against the real schemas.

Every kustomize directory is rendered with ``kubectl kustomize`` and each document is checked with
``kubernetes_validate`` (strict: unknown fields fail) against the newest Kubernetes version the
installed package ships schemas for. Custom resources (KServe's InferenceService) have no schema
there and are checked structurally. The other tests pin the facts that tie the pieces together:
model name and path, ports, probes, resources, GPU scheduling, node ports, RBAC scope.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
KUSTOMIZE_DIRS = {
    "base": MANIFESTS / "serving" / "base",
    "kind": MANIFESTS / "serving" / "overlays" / "kind",
    "gpu": MANIFESTS / "serving" / "overlays" / "gpu",
    "models-config": MANIFESTS / "serving" / "overlays" / "models-config",
    "kserve": MANIFESTS / "kserve",
    "rbac": MANIFESTS / "rbac",
}
#: the variants started with --model_name / --model_base_path (models-config uses a config file)
SERVING_DIRS = ("base", "kind", "gpu")
ALL_SERVING_DIRS = SERVING_DIRS + ("models-config",)
NAMESPACE = "mammo"
MODEL_NAME = "mammo"
#: TF Serving everywhere (plain Deployments and KServe): 2.20 loads the SavedModels TF 2.21 writes
TF_SERVING = "2.20.0"
GRPC_PORT, REST_PORT = 8500, 8501
# Custom resources: no schema in kubernetes_validate, checked structurally below.
CRD_GROUPS = {"serving.kserve.io"}
K8S_VERSION = kubernetes_validate.latest_version()

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not on PATH: cannot render the kustomizations (install kubectl)"
)


# -- helpers --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _render_cached(name: str) -> tuple:
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(KUSTOMIZE_DIRS[name])], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize {KUSTOMIZE_DIRS[name]} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(name: str) -> list[dict]:
    """The rendered documents of one kustomize directory (fresh copies: tests may not share edits)."""
    return [copy.deepcopy(doc) for doc in _render_cached(name)]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def serving_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the TF Serving pod runs one container"
    return containers[0]


def effective_args(container: dict) -> dict[str, str]:
    """``--flag=value`` args with Kubernetes' ``$(VAR)`` expansion from the container's env."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}

    def expand(text: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)

    flags: dict[str, str] = {}
    for arg in container.get("args", []):
        key, _, value = expand(arg).partition("=")
        assert key not in flags, f"{key} given twice"
        flags[key] = value
    return flags


def port_number(container: dict, port: int | str) -> int:
    """A probe's / Service's target port as a number (resolving a named container port)."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"port {port!r} is not a named port of container {container['name']}"
    return by_name[port]


def image_tag(image: str) -> str:
    name_and_tag = image.split("@")[0]  # a digest may follow the tag
    assert ":" in name_and_tag.rsplit("/", 1)[-1], f"image {image} is not pinned by tag"
    return name_and_tag.rsplit(":", 1)[1]


# -- schema validation ----------------------------------------------------------------------------
@needs_kubectl
@pytest.mark.parametrize("name", sorted(KUSTOMIZE_DIRS))
def test_every_rendered_document_validates_against_kubernetes_schema(name):
    docs = render(name)
    assert docs, f"{name} renders nothing"
    for doc in docs:
        group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        if group in CRD_GROUPS:
            continue  # structural checks in test_kserve_*
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{where} is invalid for Kubernetes {K8S_VERSION}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{where}: {e.message} (a custom resource? add its group to CRD_GROUPS)")


def test_validator_rejects_unknown_fields():
    """Guards the test above: strict validation really catches a typo."""
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 1, "nodeport": 30000}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("name", ["base", "kind", "gpu", "models-config", "kserve"])
def test_namespaced_objects_live_in_mammo_namespace_which_is_shipped(name):
    docs = render(name)
    namespaces = [d["metadata"]["name"] for d in of_kind(docs, "Namespace")]
    assert namespaces == [NAMESPACE]
    cluster_scoped = {"Namespace", "PersistentVolume"}
    for doc in docs:
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"


# -- TF Serving: every variant --------------------------------------------------------------------
@needs_kubectl
@pytest.mark.parametrize("name", ALL_SERVING_DIRS)
def test_every_deployment_container_has_resources_and_probes(name):
    deployments = of_kind(render(name), "Deployment")
    assert deployments
    for dep in deployments:
        for c in dep["spec"]["template"]["spec"]["containers"]:
            where = f"{name}: {dep['metadata']['name']}/{c['name']}"
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(section, {})), f"{where} {section}"
            assert "readinessProbe" in c and "livenessProbe" in c, where


@needs_kubectl
@pytest.mark.parametrize("name", SERVING_DIRS)
def test_model_name_path_and_ports_agree_with_probes_and_service(name):
    docs = render(name)
    dep, svc = one(docs, "Deployment"), one(docs, "Service")
    c = serving_container(dep)
    flags = effective_args(c)
    assert c["command"] == ["/usr/bin/tensorflow_model_server"], "bypass the image's entrypoint script"
    assert flags["--model_name"] == MODEL_NAME
    assert flags["--model_base_path"].rstrip("/").endswith("/" + MODEL_NAME)
    assert int(flags["--port"]) == GRPC_PORT
    assert int(flags["--rest_api_port"]) == REST_PORT
    assert int(flags["--file_system_poll_wait_seconds"]) == 30
    assert flags["--enable_model_warmup"] == "true"  # replays assets.extra/tf_serving_warmup_requests
    assert not any("$(" in v for v in flags.values()), f"unexpanded variable in {flags}"

    container_ports = {p["containerPort"] for p in c["ports"]}
    assert container_ports == {GRPC_PORT, REST_PORT}

    ready = c["readinessProbe"]["httpGet"]
    assert ready["path"] == f"/v1/models/{flags['--model_name']}"
    assert port_number(c, ready["port"]) == int(flags["--rest_api_port"])
    for probe in ("livenessProbe", "startupProbe"):
        if probe in c:
            handler = c[probe].get("tcpSocket") or c[probe].get("httpGet")
            assert port_number(c, handler["port"]) in container_ports, probe

    # The Service reaches the pods and maps gRPC and REST to the ports the server listens on.
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(by_name) == {"grpc", "http"}
    assert by_name["grpc"]["port"] == GRPC_PORT
    assert port_number(c, by_name["grpc"]["targetPort"]) == int(flags["--port"])
    assert by_name["http"]["port"] == REST_PORT
    assert port_number(c, by_name["http"]["targetPort"]) == int(flags["--rest_api_port"])


@needs_kubectl
@pytest.mark.parametrize("name", ALL_SERVING_DIRS)
def test_serving_pod_runs_as_non_root_with_read_only_root_and_own_service_account(name):
    docs = render(name)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = serving_container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    sa_names = [d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")]
    assert pod["serviceAccountName"] == "mammo-serving" and "mammo-serving" in sa_names
    assert image_tag(c["image"]) not in {"", "latest"}


@needs_kubectl
@pytest.mark.parametrize("name", ["base", "kind"])
def test_local_model_path_is_read_from_the_mammo_models_claim(name):
    docs = render(name)
    dep = one(docs, "Deployment")
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "mammo-models"
    pod = dep["spec"]["template"]["spec"]
    c = serving_container(dep)
    claim_volumes = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert list(claim_volumes.values()) == ["mammo-models"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    (volume_name,) = claim_volumes
    mount = mounts[volume_name]
    assert mount["mountPath"] == "/models" and mount.get("readOnly") is True
    assert effective_args(c)["--model_base_path"] == f"/models/{MODEL_NAME}"
    assert image_tag(c["image"]) == TF_SERVING


# -- overlays -------------------------------------------------------------------------------------
@needs_kubectl
def test_kind_overlay_is_small_single_replica_with_node_ports_and_standard_storage():
    docs = render("kind")
    base_dep = one(render("base"), "Deployment")
    dep, svc, pvc = one(docs, "Deployment"), one(docs, "Service"), one(docs, "PersistentVolumeClaim")
    assert dep["spec"]["replicas"] == 1
    assert svc["spec"]["type"] == "NodePort"
    assert {p["port"]: p["nodePort"] for p in svc["spec"]["ports"]} == {GRPC_PORT: 30500, REST_PORT: 30501}
    assert pvc["spec"]["storageClassName"] == "standard"
    # smaller than the base
    assert serving_container(dep)["resources"] != serving_container(base_dep)["resources"]
    assert _memory_gi(serving_container(dep)["resources"]["limits"]["memory"]) <= _memory_gi(
        serving_container(base_dep)["resources"]["limits"]["memory"]
    )
    # the claim is bound to the node folder that kind mounts from the host
    pv = one(docs, "PersistentVolume")
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["claimRef"] == {"namespace": NAMESPACE, "name": "mammo-models"}
    assert pv["spec"]["storageClassName"] == "standard"
    mounts = {m["containerPath"]: m["hostPath"] for n in _kind_cluster()["nodes"] for m in n.get("extraMounts", [])}
    assert pv["spec"]["hostPath"]["path"] in mounts


def _memory_gi(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    raise AssertionError(f"unexpected memory quantity {quantity}")


@needs_kubectl
def test_gpu_overlay_requests_and_tolerates_gpu_and_reads_model_from_gcs():
    docs = render("gpu")
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = serving_container(dep)
    assert dep["spec"]["replicas"] == 2
    assert c["image"] == f"tensorflow/serving:{TF_SERVING}-gpu"
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert int(c["resources"]["requests"].get("nvidia.com/gpu", 1)) == 1
    assert any(
        t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" and t.get("operator") in ("Exists", "Equal")
        for t in pod["tolerations"]
    )
    base_path = effective_args(c)["--model_base_path"]
    assert re.fullmatch(rf"gs://[^/]+/models/{MODEL_NAME}", base_path), base_path
    # only GPU nodes: a node selector on the accelerator label, as the pipeline's GPU steps use
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["serviceAccountName"] == "mammo-serving"
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    # no claim left behind (a ReadWriteOnce claim would pin both replicas to one node)
    assert not of_kind(docs, "PersistentVolumeClaim")
    assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
    mounted = {m["name"] for m in c.get("volumeMounts", [])}
    assert mounted <= {v["name"] for v in pod.get("volumes", [])}


@needs_kubectl
def test_models_config_overlay_pins_versions_with_stable_and_canary_labels():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    docs = render("models-config")
    dep, cm = one(docs, "Deployment"), one(docs, "ConfigMap")
    pod = dep["spec"]["template"]["spec"]
    c = serving_container(dep)
    flags = effective_args(c)
    assert "--model_name" not in flags and "--model_base_path" not in flags  # not allowed with a config file
    assert int(flags["--port"]) == GRPC_PORT and int(flags["--rest_api_port"]) == REST_PORT
    assert int(flags["--model_config_file_poll_wait_seconds"]) > 0
    assert flags["--enable_model_warmup"] == "true"
    config_path = Path(flags["--model_config_file"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = volumes[mounts[str(config_path.parent)]]
    assert config_volume["configMap"]["name"] == cm["metadata"]["name"]  # no hash suffix: edits reach the pod
    text = cm["data"][config_path.name]
    # parsed by TF Serving's own message type: a typo fails here, not in the pod
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == MODEL_NAME
    assert c["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{model.name}"
    assert model.base_path == f"/models/{MODEL_NAME}" and mounts["/models"] == "models"
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "mammo-models"
    pinned = set(model.model_version_policy.specific.versions)
    labels = dict(model.version_labels)
    assert set(labels) == {"stable", "canary"} and labels["stable"] != labels["canary"]
    assert set(labels.values()) <= pinned  # TF Serving only labels versions it loads


# -- KServe ---------------------------------------------------------------------------------------
@needs_kubectl
def test_kserve_inference_service_serves_tensorflow_model_from_storage_uri():
    isvc = one(render("kserve"), "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["name"] == MODEL_NAME  # KServe's TF runtime serves it under this name
    assert isvc["metadata"]["namespace"] == NAMESPACE
    predictor = isvc["spec"]["predictor"]
    if "model" in predictor:
        model = predictor["model"]
        assert model["modelFormat"]["name"] == "tensorflow"
    else:
        model = predictor["tensorflow"]
    assert re.fullmatch(rf"(gs|s3|pvc)://\S+/{MODEL_NAME}", model["storageUri"]), model["storageUri"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(model["resources"][section])
    # KServe's default TF Serving (2.6) cannot load our SavedModel: the runtime version is pinned
    assert model["runtimeVersion"] == TF_SERVING
    allowed = {"model", "tensorflow", "minReplicas", "maxReplicas", "serviceAccountName"}
    assert set(predictor) <= allowed, f"unexpected predictor fields {set(predictor) - allowed}"


# -- RBAC -----------------------------------------------------------------------------------------
@needs_kubectl
def test_pipeline_service_account_may_only_read_and_roll_tf_serving_in_mammo():
    docs = render("rbac")
    sa = one(docs, "ServiceAccount")
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == ("mammo-pipeline", "kubeflow")
    assert role["metadata"]["namespace"] == NAMESPACE == binding["metadata"]["namespace"]
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")

    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == {("apps", "deployments"): {"get", "list", "patch"}, ("", "pods"): {"get", "list"}}
    # get/patch are limited to the Deployment the base actually ships
    serving_name = one(render("base"), "Deployment")["metadata"]["name"]
    for rule in role["rules"]:
        if "patch" in rule["verbs"]:
            assert rule.get("resourceNames") == [serving_name]

    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mammo-pipeline", "namespace": "kubeflow"}]


# -- kind cluster config --------------------------------------------------------------------------
def _kind_cluster() -> dict:
    return yaml.safe_load((MANIFESTS / "kind" / "cluster.yaml").read_text())


def test_kind_cluster_publishes_node_ports_and_mounts_host_models_dir():
    cluster = _kind_cluster()
    assert cluster["kind"] == "Cluster" and cluster["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = sorted(n["role"] for n in cluster["nodes"])
    assert roles == ["control-plane", "worker"]
    mappings = [m for n in cluster["nodes"] for m in n.get("extraPortMappings", [])]
    assert sorted((m["containerPort"], m["hostPort"]) for m in mappings) == [(30500, 30500), (30501, 30501)]
    assert all(m.get("protocol", "TCP") == "TCP" for m in mappings)
    # the worker (where TF Serving is scheduled) has the models folder
    (worker,) = [n for n in cluster["nodes"] if n["role"] == "worker"]
    assert {"hostPath": "/tmp/mammo-models", "containerPath": "/models"}.items() <= worker["extraMounts"][0].items()


@needs_kubectl
def test_kind_node_ports_match_the_cluster_port_mappings():
    svc = one(render("kind"), "Service")
    mapped = {m["containerPort"] for n in _kind_cluster()["nodes"] for m in n.get("extraPortMappings", [])}
    assert {p["nodePort"] for p in svc["spec"]["ports"]} == mapped


@needs_kubectl
@pytest.mark.parametrize("name", ALL_SERVING_DIRS)
def test_serving_waits_for_its_first_model_without_being_killed(name):
    """TF Serving opens its ports only after a first version loads: applied before the first push it
    must wait (not Ready) for as long as a first pipeline run can take, not crash-loop."""
    from mammo.components.config import ClusterConfig

    c = serving_container(one(render(name), "Deployment"))
    assert image_tag(c["image"]).startswith(TF_SERVING)
    start = c["startupProbe"]
    window = start.get("periodSeconds", 10) * start.get("failureThreshold", 3) + start.get("initialDelaySeconds", 0)
    assert window >= 2 * ClusterConfig().train_timeout_s, window
    assert "httpGet" in c["readinessProbe"]  # not Ready (no traffic) until the model is served


def test_every_tf_serving_reference_is_the_same_version():
    found = set()
    for path in MANIFESTS.rglob("*.yaml"):
        text = path.read_text()
        found |= {m for m in re.findall(r"tensorflow/serving:(\d+\.\d+\.\d+)", text)}
        found |= set(re.findall(r"newTag: (\d+\.\d+\.\d+)", text))
        found |= set(re.findall(r'runtimeVersion: "(\d+\.\d+\.\d+)', text))
    assert found == {TF_SERVING}
