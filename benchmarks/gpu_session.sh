#!/usr/bin/env bash
# The GPU engine's whole check in one command, for a machine with an NVIDIA
# GPU, CuPy, Cython, NumPy and SciPy (and, for the peers, PyTorch with
# CUDA): build the extensions for that machine's Python (unless carried in,
# built by benchmarks/build_for_device.sh), run the GPU tests, then the GPU
# benchmark.  The records -- environment, build log, test
# output, benchmark table, each named with the date -- go to $OUT when it is
# set (a device run) or benchmarks/results/ otherwise; commit them there.
#
#   bash benchmarks/gpu_session.sh
#
# With the device tool, one call within its 600 s: first, here,
# `bash benchmarks/build_for_device.sh` (Python 3.12, as on the device), then
#   run(command="bash benchmarks/gpu_session.sh", timeout_s=600,
#       carry=[the four pyflowcore/_kernels/*.cpython-312-*.so it lists])
# The tests get 240 s and the benchmark 300 s; the benchmark writes its table
# after every section, so a run cut short keeps what it measured.
set -u -o pipefail
export PYTHONUNBUFFERED=1
dest=${OUT:-benchmarks/results}
day=$(date -u +%Y-%m-%d)
mkdir -p "$dest"
{
    nvidia-smi
    python3 -c "import sys, cupy, numpy, scipy, Cython
print('Python', sys.version.split()[0], '| CuPy', cupy.__version__, '| NumPy', numpy.__version__,
      '| SciPy', scipy.__version__, '| Cython', Cython.__version__)"
} > "$dest/gpu-$day-env.txt" 2>&1
cat "$dest/gpu-$day-env.txt"
# Extensions built beforehand for this Python (benchmarks/build_for_device.sh)
# and carried here are used as they are; otherwise build them.
if python3 -c "import pyflowcore._kernels.rowwise, pyflowcore._kernels.realnvp, \
pyflowcore._kernels.cholesky, pyflowcore._kernels.vmath" 2> /dev/null; then
    echo "extensions built beforehand: $(ls pyflowcore/_kernels/*.so)" > "$dest/gpu-$day-build.log"
elif ! python3 setup.py build_ext --inplace -j "$(nproc)" > "$dest/gpu-$day-build.log" 2>&1; then
    tail -40 "$dest/gpu-$day-build.log"
    exit 1
fi
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/cuda 2>&1 | tee "$dest/gpu-$day-tests.txt"
tests=$?
# GPU_BENCH_ARGS shrinks the benchmark for a dry run of this script on the
# CPU, under the CUDA emulator of tests/cuda/emulator:
#   OUT=/tmp/dry PYTHONPATH=tests/cuda/emulator PYFLOWCORE_CUDA_EMULATOR=1 \
#   GPU_BENCH_ARGS="--n 3000 --n-realnvp 700 --repeat 1" bash benchmarks/gpu_session.sh
# shellcheck disable=SC2086
timeout 300 python3 benchmarks/gpu_bench.py "$dest/gpu-$day.md" ${GPU_BENCH_ARGS:-}
bench=$?
exit $(( tests != 0 || bench != 0 ))
