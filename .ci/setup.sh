#!/usr/bin/env bash
# Sets everything up on a fresh Debian/Ubuntu machine: the data set and the browser from apt,
# then a virtual environment in .venv with PyTorch and vae_utils (editable, with test extras).
# Usage: bash .ci/setup.sh        (as root, or a user with sudo)
# Override the PyTorch pair with TORCH_SPEC, e.g. TORCH_SPEC="torch torchvision" for your platform's build.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
PYTHON=${PYTHON:-python3}

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    # Fashion-MNIST offline (all 70,000 images, idx .gz files), a real browser for the slider test, and a
    # C++ compiler for torch.compile (the tests of TrainConfig(compile=True) compile on the CPU).
    $SUDO apt-get install -y --no-install-recommends dataset-fashion-mnist chromium g++
else
    echo "apt-get not found: install Fashion-MNIST yourself (see README) and chromium for the browser test." >&2
fi

# vae_utils needs Python >= 3.10 (pyproject.toml's requires-python). Say so before pip does, and how to fix it.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    found=$("$PYTHON" --version 2>&1 || echo "no $PYTHON on PATH")
    echo "setup.sh: vae_utils needs Python 3.10 or newer; $PYTHON is: $found." >&2
    echo "  Install a newer Python (e.g. apt-get install python3.11, or pyenv/conda), then run" >&2
    echo "  PYTHON=python3.11 bash .ci/setup.sh" >&2
    exit 1
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $TORCH_SPEC
.venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/python -c "import torch, torchvision, vae_utils; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| vae_utils', vae_utils.__version__)"
