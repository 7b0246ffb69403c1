#!/usr/bin/env bash
# Step 3: Kubeflow Pipelines standalone $KFP_VERSION, platform-agnostic manifests, into namespace kubeflow.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"
require_context

step "Kubeflow Pipelines $KFP_VERSION (platform-agnostic)"
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
kubectl wait --for condition=established --timeout=60s crd/applications.app.k8s.io
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"
step "waiting for the KFP deployments (first start pulls images: several minutes)"
kubectl wait --for condition=Available --timeout=20m -n kubeflow deployment --all
