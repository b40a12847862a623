# syntax=docker/dockerfile:1
#
# The fraud-scoring job as an image (see docs/operations.md).
#
#   docker build -t bytewax-fraud .                     # CPU image (the default, last stage)
#   docker build --target cuda -t bytewax-fraud:cuda .  # CUDA 13 + cuDNN 9 image
#   docker run --rm -p 9100:9100 -v fraud-state:/data/state -v fraud-recovery:/data/recovery \
#       -v fraud-out:/data/out bytewax-fraud
#
# Both images install the project from pyproject.toml into /opt/venv in a builder stage and
# copy only that virtual environment into the final stage. They run as the non-root user
# `fraud` (uid 10001), keep state, recovery snapshots and outputs under /data, serve Prometheus
# metrics on :9100 and start `python -m bytewax.run dataflows.fraud`. SIGTERM (STOPSIGNAL) or
# SIGINT stops the job gracefully: it ends the input, snapshots, flushes and exits 0.
#
# Build arguments:
#   BASE         the CPU image's base: any Debian-like image with Python 3.11 or 3.12 and venv
#                (the test suite builds on a local Debian bookworm base, see docs/container.md)
#   CUDA_BASE    the CUDA image's base
#   ONNXRUNTIME  the ONNX Runtime wheel of the CPU image: `onnxruntime` (CPU only, ~300 MB less)
#                or `onnxruntime-gpu`, the project's declared dependency
#   PIP_INDEX_URL, PIP_DEFAULT_TIMEOUT  where the builder's pip downloads from, and its timeout

ARG BASE=python:3.11-slim
ARG CUDA_BASE=nvidia/cuda:13.1.1-cudnn-runtime-ubuntu24.04

# --- CPU: builder ---------------------------------------------------------------------------
FROM ${BASE} AS builder
ARG ONNXRUNTIME=onnxruntime
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_DEFAULT_TIMEOUT=60
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies first, in a layer of their own: a code change does not download them again.
# pyproject.toml declares onnxruntime-gpu; the CPU image swaps in $ONNXRUNTIME (same versions).
COPY pyproject.toml ./
RUN sed -i "s/\"onnxruntime-gpu\([<>=~!]\)/\"${ONNXRUNTIME}\1/" pyproject.toml \
    && mkdir bytewax_fraud dataflows models \
    && touch README.md \
    && pip install --no-cache-dir . \
    && pip uninstall --yes --quiet bytewax-fraud
COPY README.md ./
COPY bytewax_fraud ./bytewax_fraud
COPY dataflows ./dataflows
COPY models ./models
# Then the project itself; and out goes what the job never loads: pip and setuptools, the
# libraries' test suites and onnx's backend test data.
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && find /opt/venv -depth -type d \( -name tests -o -path '*/onnx/backend/test' \) \
        -exec rm -rf {} + \
    && python -m pip uninstall --yes --quiet pip setuptools

# --- CUDA: base, builder and final image (docker build --target cuda) ------------------------
# onnxruntime-gpu 1.31 (a dependency of the project) is built for CUDA 13 and cuDNN 9 and
# loads them from this base (Ubuntu 24.04, whose Python is 3.12).
FROM ${CUDA_BASE} AS cuda-base
ENV DEBIAN_FRONTEND=noninteractive
# Not pinned (DL3008): Ubuntu keeps only the newest python3.12 in noble-updates, so a pinned
# version stops building at its next security update; the base image tag is pinned instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.12 /usr/local/bin/python

FROM cuda-base AS cuda-builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bytewax_fraud ./bytewax_fraud
COPY dataflows ./dataflows
COPY models ./models
RUN pip install --no-cache-dir .

FROM cuda-base AS cuda
RUN groupadd --system --gid 10001 fraud \
    && useradd --system --uid 10001 --gid fraud --home-dir /app --no-create-home fraud \
    && mkdir -p /app /data/state /data/recovery /data/out \
    && chown -R fraud:fraud /app /data
COPY --from=cuda-builder /opt/venv /opt/venv
COPY --chown=fraud:fraud models /app/models
WORKDIR /app
# FRAUD_RECOVERY_DIR and BYTEWAX_RECOVERY_DIRECTORY must name the same directory, and the
# FRAUD_/BYTEWAX_ snapshot and backup intervals must agree (bytewax.run reads the BYTEWAX_ ones).
# onnxruntime keeps a telemetry device id under $XDG_CACHE_HOME and a session file in $TMPDIR:
# both go to the state volume, so the job writes nothing outside its volumes (--read-only works).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/data/state/.cache \
    TMPDIR=/data/state/.cache \
    FRAUD_MODEL=/app/models/fraud_gru.onnx \
    FRAUD_DEVICE=cuda \
    FRAUD_STATE_DIR=/data/state \
    FRAUD_RECOVERY_DIR=/data/recovery \
    FRAUD_OUTPUT_DIR=/data/out \
    FRAUD_METRICS_PORT=9100 \
    FRAUD_SNAPSHOT_INTERVAL=5 \
    FRAUD_BACKUP_INTERVAL=30 \
    BYTEWAX_RECOVERY_DIRECTORY=/data/recovery \
    BYTEWAX_SNAPSHOT_INTERVAL=5 \
    BYTEWAX_RECOVERY_BACKUP_INTERVAL=30
VOLUME ["/data/state", "/data/recovery", "/data/out"]
EXPOSE 9100
USER 10001:10001
# The job stops gracefully on SIGTERM (and SIGINT); deploy/k8s gives it the grace period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/livez' % os.environ['FRAUD_METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["python", "-m", "bytewax.run", "dataflows.fraud"]

# --- CPU: final image (the default target) --------------------------------------------------
FROM ${BASE} AS cpu
RUN groupadd --system --gid 10001 fraud \
    && useradd --system --uid 10001 --gid fraud --home-dir /app --no-create-home fraud \
    && mkdir -p /app /data/state /data/recovery /data/out \
    && chown -R fraud:fraud /app /data
COPY --from=builder /opt/venv /opt/venv
COPY --chown=fraud:fraud models /app/models
WORKDIR /app
# FRAUD_RECOVERY_DIR and BYTEWAX_RECOVERY_DIRECTORY must name the same directory, and the
# FRAUD_/BYTEWAX_ snapshot and backup intervals must agree (bytewax.run reads the BYTEWAX_ ones).
# onnxruntime keeps a telemetry device id under $XDG_CACHE_HOME and a session file in $TMPDIR:
# both go to the state volume, so the job writes nothing outside its volumes (--read-only works).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/data/state/.cache \
    TMPDIR=/data/state/.cache \
    FRAUD_MODEL=/app/models/fraud_gru.onnx \
    FRAUD_DEVICE=cpu \
    FRAUD_STATE_DIR=/data/state \
    FRAUD_RECOVERY_DIR=/data/recovery \
    FRAUD_OUTPUT_DIR=/data/out \
    FRAUD_METRICS_PORT=9100 \
    FRAUD_SNAPSHOT_INTERVAL=5 \
    FRAUD_BACKUP_INTERVAL=30 \
    BYTEWAX_RECOVERY_DIRECTORY=/data/recovery \
    BYTEWAX_SNAPSHOT_INTERVAL=5 \
    BYTEWAX_RECOVERY_BACKUP_INTERVAL=30
VOLUME ["/data/state", "/data/recovery", "/data/out"]
EXPOSE 9100
USER 10001:10001
# The job stops gracefully on SIGTERM (and SIGINT); deploy/k8s gives it the grace period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/livez' % os.environ['FRAUD_METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["python", "-m", "bytewax.run", "dataflows.fraud"]
