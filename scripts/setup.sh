#!/usr/bin/env bash
# One-time set-up of a fresh machine: a Python 3.11 virtualenv in .venv with the project and
# everything the tests and the main job need, plus the Triton runtime files (backend stub and
# the stub's numpy-1 environment under ~/.cache/wvm). Safe to rerun: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, got {sys.version}"'

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: on this machine 2.13.0 resolves to the CPU wheel shipped on disk;
# an unpinned torch would pull several GB of CUDA packages.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[sim,dev]"
.venv/bin/python -c "from wvm.serving.server import prepare_backends, prepare_stub_env; prepare_backends(); prepare_stub_env()"
echo "set-up done: $(.venv/bin/wvm --help | head -1)"
