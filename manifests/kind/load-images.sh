#!/usr/bin/env bash
# Step 4: copy the locally built images into the cluster's nodes (no registry needed; the tags are
# not :latest, so the pods' default pull policy IfNotPresent uses these copies).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

CPU_IMAGE="$(image_name CPU_IMAGE)"
GPU_IMAGE="$(image_name GPU_IMAGE)"
step "loading $CPU_IMAGE and $GPU_IMAGE into $MAMMO_CLUSTER '$CLUSTER_NAME'"
if [[ "$MAMMO_CLUSTER" == kind ]]; then
  kind load docker-image --name "$CLUSTER_NAME" "$CPU_IMAGE" "$GPU_IMAGE"
else
  minikube image load --profile "$CLUSTER_NAME" "$CPU_IMAGE"
  minikube image load --profile "$CLUSTER_NAME" "$GPU_IMAGE"
fi
