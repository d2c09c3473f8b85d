# The pipeline image: flows, Dask workers and the Prefect Kubernetes worker's job pods.
# Build from the repository root:  docker build -f infra/docker/wvm.Dockerfile -t $WVM_IMAGE .
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/wvm
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY pipelines pipelines
COPY flows flows
COPY wvm wvm
COPY model_repository model_repository
COPY prefect.yaml prefect.yaml
# CPU torch in this image: the model runs on the Triton GPU nodes, not here.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -e . "prefect-kubernetes==0.8.0"
ENV PREFECT_LOGGING_LEVEL=INFO PYTHONUNBUFFERED=1
