#!/usr/bin/env bash
# The GPU cluster guide (README "On a cluster"): the paper profile on a cluster that already runs
# Kubeflow Pipelines and has a tainted GPU node pool, with data, artifacts and models in a bucket.
#
#   KFP_HOST=http://localhost:8888 DATA_URI=gs://b/cbis-ddsm NORMALS_URI=gs://b/ddsm-normals \
#   SERVING_ROOT=gs://b/models PIPELINE_ROOT=gs://b/kfp manifests/kind/gpu-cluster.sh
#
# Set CRON (KFP's six fields, seconds first) to also schedule the retraining; running the script
# again replaces that schedule (same name), it does not add a second one. Multi-user Kubeflow: set
# KFP_NAMESPACE (your profile namespace) and export KF_PIPELINES_TOKEN (e.g. kubectl create token).
# TF Serving may start before the first model exists: it waits, not Ready, until the first
# promoted run pushes one. No credentials here: the pods reach the bucket through workload
# identity on SERVICE_ACCOUNT, or through a Kubernetes secret holding key.json (GCP_KEY_SECRET).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

: "${KFP_HOST:?KFP API URL, e.g. http://localhost:8888 after: kubectl port-forward -n kubeflow svc/ml-pipeline 8888:8888}"
: "${DATA_URI:?gs://bucket/prefix holding the four CBIS-DDSM CSVs and the CBIS-DDSM/ tree}"
: "${NORMALS_URI:?gs://bucket/prefix holding the DDSM normals}"
: "${SERVING_ROOT:?gs://bucket/models, the folder TF Serving reads}"
: "${PIPELINE_ROOT:?gs://bucket/prefix for the runs artifacts}"
GPU_LABEL="${GPU_LABEL:-cloud.google.com/gke-accelerator}"
GPU_TYPE="${GPU_TYPE:-nvidia-l4}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"
GCP_KEY_SECRET="${GCP_KEY_SECRET:-}"
EXTRACT_SHARDS="${EXTRACT_SHARDS:-32}"
GPU_SERVING_OVERLAY="${GPU_SERVING_OVERLAY:-manifests/serving/overlays/gpu}"
CRON="${CRON:-}"
KFP_NAMESPACE="${KFP_NAMESPACE:-}"

cluster_settings=(--set "cluster.gpu_node_label=$GPU_LABEL" --set "cluster.gpu_type=$GPU_TYPE" \
  --set "cluster.pipeline_root=$PIPELINE_ROOT" --set "cluster.service_account=$SERVICE_ACCOUNT" \
  --set "cluster.gcp_credentials_secret=$GCP_KEY_SECRET")
api_settings=(--host "$KFP_HOST" --namespace "$KFP_NAMESPACE")

step "compiling (pipeline.yaml: to review, or to upload in the KFP UI)"
mammo compile --out pipeline.yaml --profile paper "${cluster_settings[@]}"
step "TF Serving on the GPU nodes, reading $SERVING_ROOT ($GPU_SERVING_OVERLAY)"
kubectl apply -k "$GPU_SERVING_OVERLAY"
step "one run now"
mammo submit "${api_settings[@]}" --data "$DATA_URI" --normals "$NORMALS_URI" --serving-root "$SERVING_ROOT" \
  --extract-shards "$EXTRACT_SHARDS" --profile paper "${cluster_settings[@]}"
if [[ -n "$CRON" ]]; then
  step "scheduled retraining ($CRON): one run at a time, missed runs not caught up"
  mammo schedule "${api_settings[@]}" --data "$DATA_URI" --normals "$NORMALS_URI" --serving-root "$SERVING_ROOT" \
    --extract-shards "$EXTRACT_SHARDS" --cron "$CRON" --profile paper "${cluster_settings[@]}"
fi
