#!/usr/bin/env bash
# Step 6: synthetic CBIS-DDSM-layout data into $DATA_DIR (the node's /data), then one run of the
# demo profile with the local-cluster settings (manifests/kind/mammo-kind.yaml).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"
require_context

step "synthetic data in $DATA_DIR"
mammo synth --out "$DATA_DIR" --per-class 100

gpu_settings=()
if [[ "$MAMMO_CLUSTER" == minikube ]] && have_gpu; then
  gpu_settings=(--set cluster.train_gpus=1)
fi

step "submitting the demo run to the KFP API (port-forward localhost:$KFP_API_PORT)"
kubectl port-forward -n kubeflow svc/ml-pipeline "$KFP_API_PORT:8888" >"$STATE_DIR/port-forward-api.log" 2>&1 &
port_forward=$!
trap 'kill "$port_forward" 2>/dev/null || true' EXIT
wait_for_url "http://localhost:$KFP_API_PORT/apis/v2beta1/healthz"
mammo submit --host "http://localhost:$KFP_API_PORT" --data /data/cbis --normals /data/normals \
  --serving-root /models --profile demo --config "$RUN_CONFIG" --extract-shards 2 \
  ${gpu_settings[@]+"${gpu_settings[@]}"}
