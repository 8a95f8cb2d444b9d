#!/usr/bin/env bash
# Build the Cython extensions here for the device machine's Python, so that a
# device run spends its minutes on the GPU, not on compiling.  The device image
# runs Python 3.12 (see /work/.library/device/KINDS.md); the extensions are
# built for baseline x86-64 with run-time dispatch, so they run on its CPU.
#
#   bash benchmarks/build_for_device.sh [python3.12]
#
# Then name the four files it prints in the device run's `carry`;
# benchmarks/gpu_session.sh uses them when they import, and builds otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3.12}
venv=${TMPDIR:-/tmp}/pyflowcore-device-build
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "setuptools>=77" wheel "Cython>=3.0" "numpy>=2.0" "scipy>=1.11"
"$venv/bin/python" setup.py build_ext --inplace -j "$(nproc)" > "$venv/build.log" 2>&1 \
    || { tail -40 "$venv/build.log"; exit 1; }
suffix=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
ls pyflowcore/_kernels/*"$suffix"
