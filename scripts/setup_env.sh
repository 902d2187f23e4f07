#!/usr/bin/env bash
# Create .venv and install pleura with the right torch: the CPU build unless an NVIDIA GPU is present,
# so a CPU machine never downloads the multi-GB CUDA build. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "pleura needs Python >= 3.10")'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing torch==$TORCH_VERSION (CUDA build)"
    "${PIP[@]}" install "torch==$TORCH_VERSION"
  else
    echo "setup: no GPU, installing the CPU build of torch==$TORCH_VERSION"
    # A CPU wheel on the machine's local wheel store (pip find-links) if there is one, else PyTorch's CPU index.
    "${PIP[@]}" install --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null ||
      "${PIP[@]}" install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
  fi
fi
"${PIP[@]}" install -q -e ".[dev]"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
