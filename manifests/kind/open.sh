#!/usr/bin/env bash
# Step 7: the KFP UI on localhost:$KFP_UI_PORT and the TF Serving REST endpoint (until Ctrl-C).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"
require_context

if [[ "$MAMMO_CLUSTER" == kind ]]; then
  serving_url="http://localhost:30501"  # the kind overlay's NodePort, published by cluster.yaml
else
  kubectl port-forward -n mammo svc/tf-serving "$SERVING_REST_PORT:8501" >"$STATE_DIR/port-forward-serving.log" 2>&1 &
  serving=$!
  trap 'kill "$serving" 2>/dev/null || true' EXIT
  serving_url="http://localhost:$SERVING_REST_PORT"
  wait_for_url "$serving_url/v1/models/mammo"
fi
echo "Kubeflow Pipelines UI: http://localhost:$KFP_UI_PORT"
echo "TF Serving model status: $serving_url/v1/models/mammo"
echo "classify a patch: mammo predict --rest $serving_url some_patch.png"
kubectl port-forward -n kubeflow svc/ml-pipeline-ui "$KFP_UI_PORT:80"
