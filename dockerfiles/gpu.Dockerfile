#
# mammo GPU image: the train step (one task per backbone, scheduled on an nvidia.com/gpu node).
# The same Python base and pinned dependencies as the CPU image (dockerfiles/requirements.lock),
# plus the CUDA libraries from PyPI that tensorflow[and-cuda] needs at the locked TensorFlow version
# (dockerfiles/requirements-gpu.lock); the node supplies only the NVIDIA driver. It builds without
# a GPU and without a TensorFlow image registry; the last step checks, as the image's user, that
# every module of the package imports, that TensorFlow was built with CUDA and that every
# tensorflow[and-cuda] requirement is installed. The KFP train component names this image as its
# base_image (GPU_IMAGE in components/config.py); KFP sets the command, so there is no ENTRYPOINT or
# CMD here. No credentials are baked in. Build from the repository root (`mammo images build` does
# this, with the right names, the host's network and CA bundle):
#
#   docker build -f dockerfiles/gpu.Dockerfile -t ghcr.io/mammo-project/mammo-gpu:0.1.0 .
#
# BASE_IMAGE and the three stages: as in cpu.Dockerfile, whose first deps layers this build shares.
ARG BASE_IMAGE=python:3.11.13-slim-bookworm

FROM ${BASE_IMAGE} AS deps
# the host's package index, when it is not PyPI (set by `mammo images build`)
ARG PIP_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# the glob lets the optional CA bundle be absent
COPY dockerfiles/requirements.lock dockerfiles/build-ca.pe[m] /tmp/build/
RUN if [ -f /tmp/build/build-ca.pem ]; then export PIP_CERT=/tmp/build/build-ca.pem; fi \
    && python3 -m venv /opt/mammo/venv \
    && /opt/mammo/venv/bin/python -m pip install --no-cache-dir -r /tmp/build/requirements.lock
COPY dockerfiles/requirements-gpu.lock /tmp/build/
RUN if [ -f /tmp/build/build-ca.pem ]; then export PIP_CERT=/tmp/build/build-ca.pem; fi \
    && /opt/mammo/venv/bin/python -m pip install --no-cache-dir \
         -c /tmp/build/requirements.lock -r /tmp/build/requirements-gpu.lock
# the project's wheel, in a stage of its own: a code change leaves the deps stage (and its copy) cached
FROM deps AS wheel
WORKDIR /tmp/src
COPY pyproject.toml setup.py README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN if [ -f /tmp/build/build-ca.pem ]; then export PIP_CERT=/tmp/build/build-ca.pem; fi \
    && /opt/mammo/venv/bin/python -m pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheel .

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mammo-gpu" \
      org.opencontainers.image.description="mammo Kubeflow pipeline train step (GPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/mammo-project/mammo"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/mammo/venv/bin:$PATH

# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can verify it and shared volumes
# (the serving model directory) get predictable ownership.
RUN groupadd --gid 1000 mammo \
    && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin mammo

COPY --from=deps /opt/mammo/venv /opt/mammo/venv
COPY --from=wheel /tmp/wheel /tmp/wheel
COPY dockerfiles/check_image.py /opt/mammo/check_image.py
RUN python -m pip install --no-cache-dir --no-deps --no-index /tmp/wheel/*.whl \
    && rm -rf /tmp/wheel \
    && python -m pip check

USER 1000:1000
ENV HOME=/home/mammo
WORKDIR /home/mammo
# as the user the pipeline runs as: every module imports, the CLI starts, TensorFlow has CUDA
RUN python /opt/mammo/check_image.py gpu
