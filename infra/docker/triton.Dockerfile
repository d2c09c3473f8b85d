# syntax=docker/dockerfile:1
# Triton on GPU nodes: NVIDIA's server image plus the wvm package for the Python backend.
# Build from the repository root:  docker build -f infra/docker/triton.Dockerfile -t $WVM_TRITON_IMAGE .
#
# The Python backend's stub embeds the image's own Python, so the backend (and wvm) run on it:
# NGC tritonserver 25.xx is Ubuntu 24.04 with Python 3.12 and CUDA 13.0 (drivers R580+ on the
# nodes), which torch 2.13.0's PyPI build (CUDA 13.0) matches. model_repository/wvm/1/model.py
# imports schemas and wvm, and through them torch, safetensors, pyarrow and the sentence encoder:
# triton-requirements.txt pins that whole import chain, resolved for Python 3.12, with numpy 1
# for the stub (REFERENCE §6). tests/test_infra.py replays the pip steps below in a fresh
# Python 3.12 venv and runs the backend's initialize() and execute() there.
FROM nvcr.io/nvidia/tritonserver:25.10-py3
# Fail the build, not the first request, if NVIDIA moves the image to another Python.
RUN python3 -c "import sys; assert sys.version_info[:2] == (3, 12), sys.version"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
RUN groupadd --gid 10001 wvm && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/wvm --shell /usr/sbin/nologin wvm
WORKDIR /opt/wvm
# Ubuntu marks its Python as externally managed (PEP 668); this image is that Python's only user.
COPY infra/docker/triton-requirements.txt ./
RUN python3 -m pip install --no-cache-dir --break-system-packages -r triton-requirements.txt
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY pipelines pipelines
COPY wvm wvm
# The project itself, without re-resolving: its dependencies are the pinned ones above.
RUN python3 -m pip install --no-cache-dir --break-system-packages --no-deps . && rm -rf build ./*.egg-info
COPY model_repository /models
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["tritonserver", "--model-repository=/models", "--disable-auto-complete-config"]
