"""The compiled pipeline (real KFP compiler) has the cluster shape users rely on.

Each distinct ``mammo compile`` command line is compiled once per module (the ``compiled``
fixture); the tests get their own deep copy of the documents.
"""

import copy

import pytest
import yaml

from mammo.pipelines.cli import main


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


class _CompileOnce:
    """``mammo compile --out <file> *args``, each distinct command line compiled once."""

    def __init__(self, tmp_path_factory) -> None:
        self.factory, self.files = tmp_path_factory, {}
        self.parsed: dict[tuple[str, ...], list] = {}

    def text(self, *args: str) -> str:
        if args not in self.files:
            out = self.factory.mktemp("compiled") / "pipeline.yaml"
            assert main(["compile", "--out", str(out), *args]) == 0
            self.files[args] = out
        return self.files[args].read_text()

    def __call__(self, *args: str) -> list:
        """[spec, platform spec], a copy the test may change."""
        if args not in self.parsed:
            self.parsed[args] = list(yaml.safe_load_all(self.text(*args)))
        return copy.deepcopy(self.parsed[args])


@pytest.fixture(scope="module")
def compiled_docs(tmp_path_factory) -> _CompileOnce:
    return _CompileOnce(tmp_path_factory)


def test_compile_writes_gpu_train_loop_and_conditional_deploy(compiled_docs):
    spec, platform = compiled_docs()
    root = spec["root"]["dag"]["tasks"]

    # train iterates over the backbones parameter
    loop = next(t for t in root.values() if t.get("parameterIterator", {}).get("items", {}).get("inputParameter")
                == "pipelinechannel--backbones")
    loop_dag = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert "train" in loop_dag and "evaluate" in loop_dag

    # the train executor requests one nvidia.com/gpu and runs the GPU image
    train_exec = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    acc = train_exec["resources"]["accelerator"]
    assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    assert "gpu" in train_exec["image"]
    assert train_exec["resources"]["cpuRequest"] > 0 and train_exec["resources"]["memoryRequest"] > 0

    # ...and tolerates GPU nodes (kfp-kubernetes platform spec)
    tolerations = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}.items() <= tolerations[0].items()

    # deploy sits under a condition on the gate's promoted output
    cond = next(t for t in root.values() if "triggerPolicy" in t)
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--select-and-gate-Output'] == true"
    cond_dag = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]
    assert list(cond_dag) == ["deploy"]
    assert "deploy" not in root

    # select_and_gate collects the per-backbone outputs
    gate_inputs = root["select-and-gate"]["inputs"]["artifacts"]
    assert set(gate_inputs) == {"evaluations", "models", "dataset"}


def test_compiled_components_do_not_pip_install(compiled_docs):
    spec = compiled_docs()[0]
    for name, ex in spec["deploymentSpec"]["executors"].items():
        cmd = " ".join(ex["container"]["command"] + ex["container"].get("args", []))
        assert "pip install" not in cmd, name  # the package comes with our images


# -- cluster settings (config.cluster, read at compile time) -----------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from mammo.components.config import CPU_IMAGE, GPU_IMAGE, ClusterConfig  # noqa: E402

DATA_STEPS = ("ingest", "validate-data", "extract-patches", "balance-split")
K8S = ("platforms", "kubernetes", "deploymentSpec", "executors")


@pytest.fixture
def _compiled(compiled_docs):
    """``(*args) -> (spec, kubernetes executors)`` of the compiled pipeline."""
    def spec_and_platform(*args: str):
        spec, platform = compiled_docs(*args)
        for key in K8S:
            platform = platform[key]
        return spec, platform

    spec_and_platform.text = compiled_docs.text
    return spec_and_platform


def _tasks(spec) -> dict:
    """Every task of the pipeline by name, whatever loop or condition it sits in."""
    found = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        found.update(comp.get("dag", {}).get("tasks", {}))
    return found


def _executor(spec, task):
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


def test_compile_writes_our_images_cpu_for_steps_and_gpu_for_training(_compiled):
    spec, _ = _compiled()
    images = {name: ex["container"]["image"] for name, ex in spec["deploymentSpec"]["executors"].items()}
    assert images.pop("exec-train") == GPU_IMAGE
    assert set(images.values()) == {CPU_IMAGE}
    # the default tags are the package version the Dockerfiles build
    from importlib.metadata import version

    assert CPU_IMAGE.endswith(":" + version("mammo")) and GPU_IMAGE.endswith(":" + version("mammo"))


def test_compile_takes_images_from_the_environment_override(tmp_path):
    out = tmp_path / "pipeline.yaml"
    env = {**os.environ, "MAMMO_CPU_IMAGE": "registry.example/mammo:7", "MAMMO_GPU_IMAGE": "registry.example/mammo-gpu:7"}
    subprocess.run([sys.executable, "-m", "mammo.pipelines.cli", "compile", "--out", str(out)], env=env, check=True,
                   capture_output=True, timeout=120)
    spec, _ = _docs(out)
    images = {name: ex["container"]["image"] for name, ex in spec["deploymentSpec"]["executors"].items()}
    assert images.pop("exec-train") == "registry.example/mammo-gpu:7"
    assert set(images.values()) == {"registry.example/mammo:7"}


def test_compile_sets_requests_and_memory_limits_per_step_group_from_the_profile(_compiled):
    spec, _ = _compiled("--set", "cluster.train_cpu=12", "--set", "cluster.train_memory=48Gi",
                        "--set", "cluster.data_memory=6Gi")
    d = ClusterConfig()
    expected = {"train": ("12", "48Gi"), "evaluate": (d.eval_cpu, d.eval_memory),
                "select-and-gate": (d.gate_cpu, d.gate_memory), "deploy": (d.gate_cpu, d.gate_memory),
                **{t: (d.data_cpu, "6Gi") for t in DATA_STEPS}}
    for task, (cpu, memory) in expected.items():
        res = _executor(spec, task)["resources"]
        assert (res["resourceCpuRequest"], res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == (
            cpu, memory, memory), task


def test_compile_gpu_type_becomes_node_selector_and_training_tolerates_gpu_taint(_compiled):
    spec, k8s = _compiled("--set", "cluster.gpu_node_label=cloud.google.com/gke-accelerator",
                          "--set", "cluster.gpu_type=nvidia-l4", "--set", "cluster.train_gpus=2")
    acc = _executor(spec, "train")["resources"]["accelerator"]
    assert (acc["resourceType"], acc["resourceCount"]) == ("nvidia.com/gpu", "2")
    assert k8s["exec-train"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert k8s["exec-train"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # only training asks for a GPU
    for name, ex in spec["deploymentSpec"]["executors"].items():
        if name != "exec-train":
            assert "accelerator" not in ex["container"].get("resources", {}), name
            assert "nodeSelector" not in k8s.get(name, {}) and "tolerations" not in k8s.get(name, {}), name


def test_compile_without_gpus_trains_on_any_node(_compiled):
    spec, k8s = _compiled("--set", "cluster.train_gpus=0")
    assert "accelerator" not in _executor(spec, "train")["resources"]
    assert "tolerations" not in k8s["exec-train"] and "nodeSelector" not in k8s["exec-train"]


def test_compile_retries_transient_steps_but_not_deterministic_ones_training_or_deploy(_compiled):
    spec, _ = _compiled("--set", "cluster.retries=4", "--set", "cluster.retry_backoff=45s")
    tasks = _tasks(spec)
    for name in ("extract-patches", "balance-split", "evaluate", "select-and-gate"):
        policy = tasks[name]["retryPolicy"]
        assert policy["maxRetryCount"] == 4 and policy["backoffDuration"] == "45s", name
        assert policy["backoffFactor"] == 2.0 and policy["backoffMaxDuration"] == "600s", name
    # a reject fraction or a critical expectation fails the same way every time: never retried
    for name in ("ingest", "validate-data", "train", "deploy"):
        assert "retryPolicy" not in tasks[name], name

    spec, _ = _compiled("--set", "cluster.train_retries=2")
    assert _tasks(spec)["train"]["retryPolicy"]["maxRetryCount"] == 2


def test_compile_puts_a_deadline_on_training_only(_compiled):
    _, k8s = _compiled("--set", "cluster.train_timeout_s=7200")
    assert int(k8s["exec-train"]["activeDeadlineSeconds"]) == 7200
    assert all("activeDeadlineSeconds" not in v for k, v in k8s.items() if k != "exec-train")


def test_compile_caches_data_steps_and_never_training_gate_or_deploy(_compiled):
    spec, _ = _compiled()
    tasks = _tasks(spec)
    for name in (*DATA_STEPS, "evaluate"):
        assert tasks[name]["cachingOptions"] == {"enableCache": True}, name
    for name in ("train", "select-and-gate", "deploy"):
        assert not tasks[name]["cachingOptions"].get("enableCache", False), name


def test_compile_limits_extract_and_backbone_fan_out_from_the_profile(_compiled):
    spec, _ = _compiled("--set", "cluster.extract_parallelism=7", "--set", "cluster.train_parallelism=2")
    loops = {t["parameterIterator"]["items"]["inputParameter"]: t["iteratorPolicy"]["parallelismLimit"]
             for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t}
    assert loops == {"pipelinechannel--shard-indices-Output": 7, "pipelinechannel--backbones": 2}


def test_compile_pipeline_root_volumes_and_key_secret_from_the_profile(_compiled):
    spec, k8s = _compiled("--set", "cluster.pipeline_root=gs://bucket/kfp", "--set", "cluster.data_pvc=mammo-data",
                          "--set", "cluster.models_pvc=mammo-models", "--set", "cluster.gcp_credentials_secret=gcp-key")
    assert spec["defaultPipelineRoot"] == "gs://bucket/kfp"
    mounts = {name: {m["constant"]: m["mountPath"] for m in cfg.get("pvcMount", [])} for name, cfg in k8s.items()}
    for name in ("exec-ingest", "exec-validate-data", "exec-extract-patches"):
        assert mounts[name] == {"mammo-data": "/data"}, name
    for name in ("exec-select-and-gate", "exec-deploy"):
        assert mounts[name] == {"mammo-models": "/models"}, name
    assert mounts["exec-train"] == {} and mounts["exec-balance-split"] == {}
    # the key arrives as a mounted Kubernetes secret in every step; no key material in the spec
    for name, ex in spec["deploymentSpec"]["executors"].items():
        assert k8s[name]["secretAsVolume"][0]["secretName"] == "gcp-key", name
        env = {e["name"]: e["value"] for e in ex["container"].get("env", [])}
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/secrets/google/key.json", name
    text = _compiled.text("--set", "cluster.pipeline_root=gs://bucket/kfp", "--set", "cluster.data_pvc=mammo-data",
                          "--set", "cluster.models_pvc=mammo-models", "--set", "cluster.gcp_credentials_secret=gcp-key")
    assert "private_key" not in text and "BEGIN PRIVATE KEY" not in text


def test_compile_default_has_no_cluster_specific_storage_or_secrets(_compiled):
    spec, k8s = _compiled()
    assert "defaultPipelineRoot" not in spec
    assert not any("pvcMount" in cfg or "secretAsVolume" in cfg for cfg in k8s.values())


def test_compile_profile_becomes_the_pipeline_parameter_defaults(_compiled):
    spec, _ = _compiled("--profile", "demo", "--set", "gate.auc_threshold=0.7", "--set", "gate.metric=macro_f1")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["auc_threshold"]["defaultValue"] == 0.7
    assert params["config"]["defaultValue"]["gate"]["metric"] == "macro_f1"
    assert params["backbones"]["defaultValue"] == ["mobilenetv3small"]


def test_bad_resource_quantity_in_the_profile_fails_compile(tmp_path):
    out = tmp_path / "pipeline.yaml"
    with pytest.raises(ValueError, match=r"cluster.train_cpu='6' / cluster.train_memory='16 GB'"):
        from mammo.components.config import load_config
        from mammo.pipelines.pipeline import compile_pipeline

        compile_pipeline(str(out), load_config("paper", None, ["cluster.train_memory=16 GB"]))
    assert not out.exists()


def test_local_pipeline_is_the_same_dag_without_retries(_compiled, tmp_path):
    """kfp.local sleeps between retries: ``mammo run`` must fail fast, the cluster build retries."""
    from kfp import compiler

    from mammo.pipelines.pipeline import mammo_pipeline

    out = tmp_path / "local.yaml"
    compiler.Compiler().compile(mammo_pipeline, package_path=str(out))
    local_tasks = _tasks(_docs(out)[0])
    cluster_tasks = _tasks(_compiled()[0])
    assert set(local_tasks) == set(cluster_tasks)
    assert not any("retryPolicy" in t for t in local_tasks.values())
    assert any("retryPolicy" in t for t in cluster_tasks.values())


# -- a real KFP backend (issue 13) ---------------------------------------------------------------------

from mammo.components.config import (RUN_PARAMETERS, apply_run_parameters, demo_config, load_config,  # noqa: E402
                                     node_fit, paper_config, run_config_dict, run_parameter_values)
from mammo.pipelines.lint import lint_file  # noqa: E402

KIND_CONFIG = "manifests/kind/mammo-kind.yaml"
PROFILES = {"paper": [], "demo": ["--profile", "demo"], "kind": ["--profile", "demo", "--config", KIND_CONFIG],
            "paper-gpu-type": ["--set", "cluster.gpu_type=nvidia-l4", "--set", "cluster.train_gpus=2"]}


def _repo_path(rel: str) -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1] / rel)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_compiles_and_passes_the_backend_rules(compiled_docs, profile):
    args = tuple(_repo_path(a) if a == KIND_CONFIG else a for a in PROFILES[profile])
    compiled_docs.text(*args)  # compile lints; a problem would fail it
    out = compiled_docs.files[args]
    assert lint_file(out) == []
    assert main(["lint", str(out)]) == 0


def test_extraction_iterates_over_integer_shards_derived_from_one_count(_compiled):
    """Point 1: the loop item that feeds the NUMBER_INTEGER shard_index is an integer, and the shard
    list comes from num_extract_shards inside the pipeline (no second list to keep in step)."""
    spec, _ = _compiled()
    root = spec["root"]["dag"]["tasks"]
    loop = next(t for t in root.values() if t.get("parameterIterator", {}).get("items", {}).get("inputParameter")
                == "pipelinechannel--shard-indices-Output")
    body = spec["components"][loop["componentRef"]["name"]]
    item = loop["parameterIterator"]["itemInput"]
    assert body["inputDefinitions"]["parameters"][item]["parameterType"] == "NUMBER_INTEGER"
    assert body["dag"]["tasks"]["extract-patches"]["inputs"]["parameters"]["shard_index"] == {
        "componentInputParameter": item}
    assert spec["components"]["comp-extract-patches"]["inputDefinitions"]["parameters"]["shard_index"][
        "parameterType"] == "NUMBER_INTEGER"
    assert loop["inputs"]["parameters"]["pipelinechannel--shard-indices-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "shard-indices"}
    assert root["shard-indices"]["inputs"]["parameters"]["num_extract_shards"] == {
        "componentInputParameter": "num_extract_shards"}
    assert "extract_shards" not in spec["root"]["inputDefinitions"]["parameters"]


def test_helper_tasks_derive_every_shard_and_apply_the_flat_parameters():
    from mammo.pipelines.run_tasks import resolve_config, shard_indices

    assert shard_indices.python_func(num_extract_shards=5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="num_extract_shards must be >= 1"):
        shard_indices.python_func(num_extract_shards=0)
    flat = {**run_parameter_values(demo_config()), "auc_threshold": 0.6, "image_size": 96}
    config = resolve_config.python_func(config=run_config_dict(demo_config()), **flat)
    assert config["gate"]["auc_threshold"] == 0.6 and config["patches"]["image_size"] == 96
    assert config["train"]["backbones"] == ["mobilenetv3small"] and "cluster" not in config


def test_demo_profile_compiles_cpu_only(_compiled):
    """Point 2: a GPU-less kind cluster schedules every pod of the demo pipeline."""
    spec, k8s = _compiled("--profile", "demo")
    text = _compiled.text("--profile", "demo")
    assert "nvidia.com/gpu" not in text and "accelerator" not in text
    assert not any("tolerations" in v or "nodeSelector" in v for v in k8s.values())


@pytest.mark.parametrize("group, node", [("data", (8, 32)), ("train", (8, 32)), ("eval", (8, 32)), ("gate", (4, 16))])
def test_default_requests_leave_headroom_below_their_node(group, node):
    """Point 2: allocatable < capacity; the requests follow ClusterConfig's documented formula."""
    from mammo.pipelines.pipeline import cpu_cores

    cl = paper_config().cluster
    cores, gib = node_fit(*node)
    cpu, memory = getattr(cl, f"{group}_cpu"), getattr(cl, f"{group}_memory")
    assert cpu_cores(cpu) <= cores < node[0] and memory.endswith("Gi") and int(memory[:-2]) <= gib < node[1]


def test_demo_requests_fit_a_laptop_kind_node():
    cl = demo_config().cluster
    assert cl.train_gpus == 0
    for group in ("data", "train", "eval", "gate"):
        cpu, memory = getattr(cl, f"{group}_cpu"), getattr(cl, f"{group}_memory")
        assert float(cpu.rstrip("m")) / (1000 if cpu.endswith("m") else 1) <= node_fit(4, 8)[0], group
        assert int(memory[:-2]) <= node_fit(4, 8)[1], group


def test_every_task_gets_its_cpu_request_as_the_worker_budget(_compiled):
    spec, _ = _compiled("--set", "cluster.data_cpu=5", "--set", "cluster.gate_cpu=1500m")
    env = {name: {e["name"]: e["value"] for e in ex["container"].get("env", [])}
           for name, ex in spec["deploymentSpec"]["executors"].items()}
    assert env["exec-extract-patches"]["MAMMO_CPUS"] == "5" and env["exec-ingest"]["MAMMO_CPUS"] == "5"
    assert env["exec-select-and-gate"]["MAMMO_CPUS"] == "1"
    assert all("MAMMO_CPUS" in e for e in env.values())


def test_runtime_cpu_budget_follows_the_request_not_the_node(monkeypatch):
    from mammo.components import runtime

    monkeypatch.setenv(runtime.CPU_ENV, "3")
    assert runtime.available_cpus() == 3
    monkeypatch.setenv(runtime.CPU_ENV, "500m")
    assert runtime.available_cpus() == 1


def test_run_form_is_flat_typed_and_described(_compiled):
    """Point 8: typed parameters with descriptions; config without cluster.* or the flat keys."""
    spec, _ = _compiled()
    params = spec["root"]["inputDefinitions"]["parameters"]
    types = {name: p["parameterType"] for name, p in params.items()}
    assert types == {"data_uri": "STRING", "normals_uri": "STRING", "serving_root": "STRING", "backbones": "LIST",
                     "auc_threshold": "NUMBER_DOUBLE", "max_auc_drop": "NUMBER_DOUBLE", "balance_mode": "STRING",
                     "image_size": "NUMBER_INTEGER", "weights": "STRING", "num_extract_shards": "NUMBER_INTEGER",
                     "config": "STRUCT"}
    assert all(len(p.get("description", "")) > 20 for p in params.values()), params
    config = params["config"]["defaultValue"]
    assert "cluster" not in config
    for key in RUN_PARAMETERS.values():
        section, leaf = key.split(".")
        assert leaf not in config[section], key
    assert params["auc_threshold"]["defaultValue"] == 0.9 and params["image_size"]["defaultValue"] == 331


def test_one_place_per_setting():
    cfg = load_config("paper", None, ["train.stage1_epochs=2"])
    params = run_parameter_values(cfg)
    resolved = apply_run_parameters(run_config_dict(cfg), {**params, "auc_threshold": 0.8})
    assert resolved.gate.auc_threshold == 0.8 and resolved.train.stage1_epochs == 2
    with pytest.raises(ValueError, match="config sets gate.auc_threshold: use the pipeline parameter 'auc_threshold'"):
        apply_run_parameters({"gate": {"auc_threshold": 0.5}}, params)
    with pytest.raises(ValueError, match="cluster settings are compile-time"):
        apply_run_parameters({"cluster": {"train_gpus": 2}}, params)


def test_ingest_cache_key_carries_the_data_fingerprint(_compiled):
    """Point 4: an uncached fingerprint task feeds ingest, so ingest's cache key follows the data."""
    spec, k8s = _compiled("--set", "cluster.data_pvc=mammo-data")
    tasks = _tasks(spec)
    assert tasks["ingest"]["inputs"]["parameters"]["data_fingerprint"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "fingerprint-data"}}
    assert not tasks["fingerprint-data"]["cachingOptions"].get("enableCache", False)
    assert tasks["fingerprint-data"]["inputs"]["parameters"]["data_uri"] == {"componentInputParameter": "data_uri"}
    # it lists the same volume ingest reads
    assert k8s["exec-fingerprint-data"]["pvcMount"][0]["constant"] == "mammo-data"
    # every step reads the resolved config, none the raw parameter
    for name in ("ingest", "validate-data", "extract-patches", "balance-split", "train", "evaluate",
                 "select-and-gate", "deploy"):
        assert tasks[name]["inputs"]["parameters"]["config"] in (  # at the root / inside a loop or condition
            {"taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "resolve-config"}},
            {"componentInputParameter": "pipelinechannel--resolve-config-Output"}), name


def test_step_display_names_are_the_eight_steps_plus_three_helpers(_compiled):
    spec, _ = _compiled()
    names = {t["taskInfo"]["name"] for t in _tasks(spec).values() if "componentRef" in t
             and "executorLabel" in spec["components"][t["componentRef"]["name"]]}
    assert names == {"fingerprint_data", "resolve_config", "shard_indices", "ingest", "validate_data", "extract_patches",
                     "balance_split", "train", "evaluate", "select_and_gate", "deploy"}
