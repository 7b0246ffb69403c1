#!/usr/bin/env bash
# The whole local walkthrough: images, cluster, KFP, images into the nodes, storage and TF Serving,
# the demo run. Then manifests/kind/open.sh for the UI and the serving endpoint.
#   manifests/kind/all.sh                          # kind
#   MAMMO_CLUSTER=minikube manifests/kind/all.sh   # minikube (--gpus all when nvidia-smi sees a GPU)
set -euo pipefail
here="$(dirname "$0")"
"$here/build-images.sh"
"$here/create-cluster.sh"
"$here/install-kfp.sh"
"$here/load-images.sh"
"$here/apply-manifests.sh"
"$here/submit-demo.sh"
echo "next: $here/open.sh (KFP UI and TF Serving); the run takes about 10-20 minutes on a laptop"
