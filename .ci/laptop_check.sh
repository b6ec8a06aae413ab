#!/usr/bin/env bash
# The README's pip-only path ("Any laptop"), as far as a Linux machine allows: a fresh virtual environment
# with `pip install -e ".[notebooks]"` and the OLDEST ipywidgets that pyproject.toml accepts (Colab ships
# ipywidgets 7), no Debian data set (its folder is hidden in a private mount namespace), Fashion-MNIST from a
# copy named by VAE_DATA_DIR, and an empty HOME (no ~/.cache). Then the widget tests and one notebook
# that loads data and shows widgets, under nbval.
# Usage: bash .ci/laptop_check.sh   (as root; .ci/run calls it after the main tests)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
PYTHON=${PYTHON:-python3}
NOTEBOOK=${LAPTOP_NOTEBOOK:-notebooks/05_exploring_the_latent_space.ipynb}
SYSTEM_DATA=/usr/share/datasets
work=$(mktemp -d /tmp/vae-laptop.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The oldest ipywidgets pyproject.toml allows: "ipywidgets>=7.6" -> ipywidgets==7.6.0.
oldest=$(sed -n 's/^ *"ipywidgets>=\([0-9.]*\)".*/\1/p' pyproject.toml)
[ -n "$oldest" ] || { echo "laptop_check: no 'ipywidgets>=X' line in pyproject.toml" >&2; exit 1; }
case "$oldest" in *.*.*) ;; *) oldest="$oldest.0" ;; esac

"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --quiet)
"${pip[@]}" install --upgrade pip
# shellcheck disable=SC2086
"${pip[@]}" install $TORCH_SPEC
"${pip[@]}" install -e '.[notebooks]' "ipywidgets==$oldest" pytest nbval
"$work/venv/bin/python" -c "import ipywidgets, torch; print('laptop venv: ipywidgets', ipywidgets.__version__, '| torch', torch.__version__)"

mkdir -p "$work/data/fashion-mnist" "$work/home"
cp "$SYSTEM_DATA"/fashion-mnist/*.gz "$work/data/fashion-mnist/"

run_tests() {
    HOME="$work/home" VAE_DATA_DIR="$work/data" VAE_TUTORIAL_QUICK=1 MPLBACKEND=Agg \
        "$work/venv/bin/python" -m pytest -o addopts="" -p no:cacheprovider -q \
        --nbval-lax --nbval-current-env --nbval-sanitize-with .ci/nbval_sanitize.cfg \
        tests/test_widgets.py "$NOTEBOOK"
}
export -f run_tests
export work NOTEBOOK
if unshare -m true 2>/dev/null; then
    # Hide the Debian data set for this run only: the notebook must find the copy through VAE_DATA_DIR.
    unshare -m bash -c "mount -t tmpfs tmpfs '$SYSTEM_DATA' && run_tests"
else
    echo "laptop_check: cannot make a private mount namespace here; $SYSTEM_DATA stays visible" >&2
    run_tests
fi
