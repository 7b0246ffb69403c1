#
# mammo CPU image: the data steps (ingest, validate_data, extract_patches, balance_split), evaluate,
# select_and_gate and deploy. The KFP components name this image as their base_image (CPU_IMAGE in
# components/config.py, what `mammo compile` writes); KFP sets the command, so there is no
# ENTRYPOINT or CMD here. Build from the repository root (`mammo images build` does this, with
# the right names, the host's network and CA bundle):
#
#   docker build -f dockerfiles/cpu.Dockerfile -t ghcr.io/mammo-project/mammo:0.1.0 .
#
# BASE_IMAGE is any Debian-like image with python3 (3.10-3.12) and its venv module: the public
# python slim image by default, or a base made from Debian packages (`mammo images build
# --local-base`) where no container registry is reachable. Three stages: `deps` installs the
# pinned dependencies (dockerfiles/requirements.lock) into a virtual environment, `wheel` builds
# this project's wheel, the final image copies both; so a code change rebuilds neither the
# dependencies nor their copy, and a CA bundle given to the build (dockerfiles/build-ca.pem,
# optional) never reaches the final image. No credentials
# are baked in: pods get them from Kubernetes secrets or workload identity at run time.
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
LABEL org.opencontainers.image.title="mammo" \
      org.opencontainers.image.description="mammo Kubeflow pipeline steps (CPU): data, evaluation, gate, deploy" \
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
# as the user the pipeline runs as: every module of the package imports, the CLI starts
RUN python /opt/mammo/check_image.py cpu
