# syntax=docker/dockerfile:1
#
# mammo CPU image: the data steps (ingest, validate, extract, balance), evaluate, gate and deploy.
# The KFP components name this image as their base_image; KFP sets the command, so there is no
# ENTRYPOINT or CMD here. Build from the repository root:
#
#   docker build -f dockerfiles/cpu.Dockerfile -t ghcr.io/mammo-project/mammo:0.1.0 .
#
# The project depends on `tensorflow` (not tensorflow-cpu); on a machine without a GPU that wheel
# simply runs on the CPU, so one dependency list serves both images.
FROM python:3.11.13-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mammo" \
      org.opencontainers.image.description="mammo Kubeflow pipeline steps (CPU): data, evaluation, gate, deploy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/mammo-project/mammo"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can verify it and shared volumes
# (the serving model directory) get predictable ownership.
RUN groupadd --gid 1000 mammo \
    && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin mammo

WORKDIR /opt/mammo/src
# Only what the distribution needs (see pyproject.toml); .dockerignore keeps the rest out.
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN python -m pip install --no-cache-dir . \
    && python -c "import mammo.components, mammo.pipelines" \
    && command -v mammo

USER 1000:1000
ENV HOME=/home/mammo
WORKDIR /home/mammo
