# syntax=docker/dockerfile:1
# The pipeline image: flow-run Jobs, the Dask scheduler and workers, the Prefect Kubernetes worker.
# Build from the repository root:  docker build -f infra/docker/wvm.Dockerfile -t $WVM_IMAGE .
# (.dockerignore keeps .venv, data/, runs/, .git and caches out of the build context.)
# tests/test_infra.py replays the pip steps below in a fresh Python 3.11 venv and imports what
# the pods run (flows, the Prefect Kubernetes worker, the model backend).
FROM python:3.11.14-slim-bookworm
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PREFECT_LOGGING_LEVEL=INFO
# The user every pod runs as (infra/k8s: runAsUser 10001); its home is an emptyDir in Kubernetes,
# the root filesystem being read-only there.
RUN groupadd --gid 10001 wvm && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/wvm --shell /usr/sbin/nologin wvm
WORKDIR /opt/wvm
# CPU torch in this image: the model runs on the Triton GPU nodes, not here.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY pipelines pipelines
COPY flows flows
COPY wvm wvm
COPY model_repository model_repository
COPY prefect.yaml prefect.yaml
RUN pip install --no-cache-dir -e . "prefect-kubernetes==0.8.0"
USER 10001:10001
# No HEALTHCHECK: this one image runs four roles (Dask scheduler, Dask worker, Prefect worker,
# flow-run Job), each with its own health endpoint, probed by Kubernetes (infra/k8s), which
# ignores a Docker HEALTHCHECK; a Job has nothing to probe.
# checkov:skip=CKV_DOCKER_2:four roles with different health endpoints, each probed by Kubernetes (infra/k8s)
