#!/usr/bin/env bash
# Asserts that the worker binary links the GPU data path: the CUDA runtime, cuBLASLt and NCCL
# (the NCCL activation link). Where no CUDA toolkit is on PATH the build is CPU-only and the check
# says so and passes.
#
#   scripts/check-gpu-link.sh [BUILD_DIR]     (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-${SHARDSERVE_BUILD_DIR:-build}}
worker="$build/bin/shardserve-worker"
if ! command -v nvcc >/dev/null 2>&1; then
  echo "check-gpu-link: no nvcc on PATH: a CPU-only build, nothing to check"
  exit 0
fi
[ -x "$worker" ] || { echo "check-gpu-link: $worker not built" >&2; exit 1; }
libs=$(ldd "$worker")
missing=()
for lib in libcudart libcublasLt libnccl; do
  grep -q "$lib" <<<"$libs" || missing+=("$lib")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "check-gpu-link: $worker does not link ${missing[*]} (ldd below)" >&2
  echo "$libs" >&2
  exit 1
fi
echo "check-gpu-link: $worker links $(grep -oE 'lib(cudart|cublasLt|nccl)[^ ]*' <<<"$libs" | sort -u | tr '\n' ' ')"
