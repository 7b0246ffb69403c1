#!/usr/bin/env bash
# Step 1: build the two images (dockerfiles/) under the names `mammo compile` writes into the
# pipeline (components/config.py; MAMMO_CPU_IMAGE / MAMMO_GPU_IMAGE override both).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

CPU_IMAGE="$(image_name CPU_IMAGE)"
GPU_IMAGE="$(image_name GPU_IMAGE)"
step "building $CPU_IMAGE and $GPU_IMAGE"
docker build -f dockerfiles/cpu.Dockerfile -t "$CPU_IMAGE" .
docker build -f dockerfiles/gpu.Dockerfile -t "$GPU_IMAGE" .
