#!/usr/bin/env bash
# Step 2: a local cluster (kind, or minikube with MAMMO_CLUSTER=minikube) whose worker node sees
# the host folders $DATA_DIR as /data and $MODELS_DIR as /models.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

mkdir -p "$DATA_DIR" "$MODELS_DIR"
# the pipeline's pods run as UID 1000 (dockerfiles/) and push model versions into this folder
chmod 0777 "$MODELS_DIR"

if [[ "$MAMMO_CLUSTER" == kind ]]; then
  step "kind cluster '$CLUSTER_NAME' (manifests/kind/cluster.yaml)"
  kind create cluster --name "$CLUSTER_NAME" --config manifests/kind/cluster.yaml --wait 5m
else
  gpu_flags=()
  if have_gpu; then
    gpu_flags=(--gpus all)  # minikube's docker driver passes the GPUs through and adds the device plugin
  fi
  step "minikube profile '$CLUSTER_NAME' ${gpu_flags[*]+${gpu_flags[*]}}"
  minikube start --profile "$CLUSTER_NAME" --driver docker --container-runtime docker \
    --cpus "$MINIKUBE_CPUS" --memory "$MINIKUBE_MEMORY" \
    ${gpu_flags[@]+"${gpu_flags[@]}"}
  # The node folders kind gets from extraMounts: 9p mounts that live as long as these processes
  # (delete-cluster.sh stops them). Files appear owned by UID 1000, the pipeline's user.
  minikube mount --profile "$CLUSTER_NAME" --uid 1000 --gid 1000 "$DATA_DIR:/data" >"$STATE_DIR/mount-data.log" 2>&1 &
  echo $! >"$STATE_DIR/mount-data.pid"
  minikube mount --profile "$CLUSTER_NAME" --uid 1000 --gid 1000 "$MODELS_DIR:/models" >"$STATE_DIR/mount-models.log" 2>&1 &
  echo $! >"$STATE_DIR/mount-models.pid"
fi
require_context
