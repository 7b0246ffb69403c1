#!/usr/bin/env bash
# Step 5: the pipeline's claims on the node folders (namespace kubeflow) and TF Serving (namespace mammo).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"
require_context

step "pipeline storage ($PIPELINE_STORAGE) and TF Serving ($SERVING_OVERLAY)"
kubectl apply -k "$PIPELINE_STORAGE"
kubectl apply -k "$SERVING_OVERLAY"
# the claims must bind to the node folders (TF Serving itself turns Ready after the first promoted run)
kubectl wait --for=jsonpath='{.status.phase}'=Bound --timeout=2m -n kubeflow pvc/mammo-data pvc/mammo-models
kubectl wait --for=jsonpath='{.status.phase}'=Bound --timeout=2m -n mammo pvc/mammo-models
