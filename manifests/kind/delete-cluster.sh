#!/usr/bin/env bash
# Remove the local cluster (and, for minikube, the folder mounts). The host folders stay.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

if [[ "$MAMMO_CLUSTER" == kind ]]; then
  kind delete cluster --name "$CLUSTER_NAME"
else
  for pid_file in "$STATE_DIR/mount-data.pid" "$STATE_DIR/mount-models.pid"; do
    if [[ -f "$pid_file" ]]; then
      kill "$(cat "$pid_file")" 2>/dev/null || true
      rm -f "$pid_file"
    fi
  done
  minikube delete --profile "$CLUSTER_NAME"
fi
