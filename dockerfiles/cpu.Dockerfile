# syntax=docker/dockerfile:1
#
# mammo CPU image: the data steps (ingest, validate, extract, balance), evaluate, gate and deploy.
# The KFP components name this image as their base_image (CPU_IMAGE in components/config.py, what
# `mammo compile` writes); KFP sets the command, so there is no ENTRYPOINT or CMD here. Build
# from the repository root:
#
#   docker build -f dockerfiles/cpu.Dockerfile -t ghcr.io/mammo-project/mammo:0.1.0 .
#
# Dependencies come from dockerfiles/requirements.lock (pinned; regenerate with
# dockerfiles/lock_requirements.py), in a layer of their own that a code change does not rebuild.
# The project depends on `tensorflow` (not tensorflow-cpu); on a machine without a GPU that wheel
# simply runs on the CPU, so one lock serves both images. No credentials are baked in: pods get
# them from Kubernetes secrets or workload identity at run time.
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
COPY dockerfiles/requirements.lock ./
RUN python -m pip install --no-cache-dir -r requirements.lock

# Only what the distribution needs (see pyproject.toml); .dockerignore keeps the rest out.
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN python -m pip install --no-cache-dir --no-deps . \
    && python -m pip check \
    && python -c "import mammo.pipelines.pipeline" \
    && command -v mammo

USER 1000:1000
ENV HOME=/home/mammo
WORKDIR /home/mammo
