# syntax=docker/dockerfile:1
#
# mammo GPU image: the train step (one task per backbone, scheduled on an nvidia.com/gpu node).
# TensorFlow, CUDA and cuDNN come from the pinned official image of the TensorFlow version in
# pyproject.toml; the pinned dependencies (dockerfiles/requirements.lock) find that TensorFlow
# already satisfied and add the rest. The KFP train component names this image as its
# base_image (GPU_IMAGE in components/config.py); KFP sets the command, so there is no
# ENTRYPOINT or CMD here. No credentials are baked in. Build from the repository root:
#
#   docker build -f dockerfiles/gpu.Dockerfile -t ghcr.io/mammo-project/mammo-gpu:0.1.0 .
FROM tensorflow/tensorflow:2.21.0-gpu

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mammo-gpu" \
      org.opencontainers.image.description="mammo Kubeflow pipeline train step (GPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/mammo-project/mammo"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same numeric UID/GID as the CPU image. Newer Ubuntu bases already ship a user with UID 1000
# ("ubuntu"): reuse it rather than fail, the UID is what Kubernetes checks.
RUN if ! getent group 1000 > /dev/null; then groupadd --gid 1000 mammo; fi \
    && if ! getent passwd 1000 > /dev/null; then \
         useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin mammo; \
       fi \
    && mkdir -p /home/mammo \
    && chown 1000:1000 /home/mammo

WORKDIR /opt/mammo/src
COPY dockerfiles/requirements.lock ./
# Fail the build if the lock replaced the image's TensorFlow (and with it the CUDA-matched build).
RUN tf_before="$(python3 -c 'import tensorflow as tf; print(tf.__version__)')" \
    && python3 -m pip install --no-cache-dir -r requirements.lock \
    && test "$(python3 -c 'import tensorflow as tf; print(tf.__version__)')" = "${tf_before}"

COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -c "import mammo.pipelines.pipeline" \
    && command -v mammo

USER 1000:1000
ENV HOME=/home/mammo
WORKDIR /home/mammo
