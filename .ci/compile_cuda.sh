#!/usr/bin/env bash
# Compile every csrc/*.cu for sm_90 with both float and double instantiations,
# failing on any error or warning.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for src in csrc/*.cu; do
    echo "nvcc: $src"
    nvcc -std=c++17 -arch=sm_90 -Icsrc -Werror all-warnings -Xcompiler -Wall,-Wextra \
        -DPFC_INSTANTIATE_ALL -c "$src" -o "$out/$(basename "$src").o"
done
