#!/usr/bin/env bash
# Settings and helpers shared by the local-cluster scripts of the cluster guide (README "On a
# cluster"). Sourced by each script, not run. Every setting can be overridden from the
# environment, e.g.  MAMMO_CLUSTER=minikube manifests/kind/all.sh
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"

MAMMO_CLUSTER="${MAMMO_CLUSTER:-kind}"  # kind | minikube
CLUSTER_NAME="${CLUSTER_NAME:-mammo}"   # kind's cluster name / minikube's profile
MINIKUBE_CPUS="${MINIKUBE_CPUS:-8}"
MINIKUBE_MEMORY="${MINIKUBE_MEMORY:-24g}"
# Kubeflow Pipelines standalone, platform-agnostic manifests (matches the kfp 2.17 SDK in pyproject.toml)
KFP_VERSION="${KFP_VERSION:-2.17.0}"
# TF Serving for the local cluster: NodePorts 30500/30501, model folder /models on the node
SERVING_OVERLAY="${SERVING_OVERLAY:-manifests/serving/overlays/kind}"
PIPELINE_STORAGE="${PIPELINE_STORAGE:-manifests/kind/pipeline-storage}"
RUN_CONFIG="${RUN_CONFIG:-manifests/kind/mammo-kind.yaml}"
# Host folders; for kind they must be the hostPaths of manifests/kind/cluster.yaml
DATA_DIR="${DATA_DIR:-/tmp/mammo-data}"
MODELS_DIR="${MODELS_DIR:-/tmp/mammo-models}"
KFP_API_PORT="${KFP_API_PORT:-8888}"
KFP_UI_PORT="${KFP_UI_PORT:-8080}"
SERVING_REST_PORT="${SERVING_REST_PORT:-8501}"
# `mammo` and `python` come from the project's environment (README quick start) when there is one
VENV="${VENV:-$REPO_ROOT/.venv}"
if [[ -d "$VENV/bin" ]]; then
  PATH="$VENV/bin:$PATH"
fi
# where background processes leave pid and log files
STATE_DIR="${MAMMO_STATE_DIR:-${TMPDIR:-/tmp}/mammo-cluster-$CLUSTER_NAME}"
mkdir -p "$STATE_DIR"

case "$MAMMO_CLUSTER" in
  kind) KUBE_CONTEXT="kind-$CLUSTER_NAME" ;;
  minikube) KUBE_CONTEXT="$CLUSTER_NAME" ;;
  *)
    echo "MAMMO_CLUSTER must be kind or minikube, not '$MAMMO_CLUSTER'" >&2
    exit 2
    ;;
esac

# The image names come from one place, components/config.py (what `mammo compile` writes)
image_name() {
  python -c "from mammo.components.config import $1; print($1)"
}

step() {
  printf '\n==> %s\n' "$*"
}

# Refuse to touch a cluster other than ours: every kubectl call below uses the current context.
require_context() {
  local current
  current="$(kubectl config current-context 2>/dev/null || true)"
  if [[ "$current" != "$KUBE_CONTEXT" ]]; then
    echo "kubectl's current context is '${current:-none}', expected '$KUBE_CONTEXT' ($MAMMO_CLUSTER cluster" \
      "'$CLUSTER_NAME'). Create it with manifests/kind/create-cluster.sh or run: kubectl config use-context $KUBE_CONTEXT" >&2
    exit 1
  fi
}

# Wait until an HTTP server answers at a URL (a port-forward is up; any HTTP status), at most $2 seconds.
wait_for_url() {
  local url="$1" seconds="${2:-60}" i
  for ((i = 0; i < seconds; i++)); do
    if curl -sS --max-time 2 -o /dev/null "$url" 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  echo "nothing answered at $url after ${seconds}s (see $STATE_DIR/*.log)" >&2
  return 1
}

# Does this machine have an NVIDIA GPU that minikube can hand to the cluster?
have_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}
