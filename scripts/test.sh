#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the packages, builds, checks
# formatting and the layering, runs clang's thread-safety analysis and every CTest test except
# those that need a GPU, then the bounded fuzz runs, the router/worker unit tests under
# ASan+UBSan, the TSan subset, the proto lint and the manifest validation.
#
#   scripts/test.sh            everything
#   scripts/test.sh -R regex   only the matching CTest tests (no format check or fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/build.sh
build=${SHARDSERVE_BUILD_DIR:-build}

if [ $# -gt 0 ]; then
  ctest --test-dir "$build" -LE gpu --output-on-failure "$@"
  exit 0
fi

echo "== clang-format"
files=$(git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | grep -v '^third_party/' || true)
if [ -n "$files" ]; then
  echo "$files" | xargs clang-format --dry-run -Werror
fi

echo "== layering (includes and build rules point one way; scripts/check-layering.py)"
scripts/check-layering.py --self-test >/dev/null
scripts/check-layering.py

echo "== clang thread-safety analysis (-Wthread-safety -Werror)"
scripts/thread-safety.sh "$build"

echo "== the worker links the GPU data path (CUDA runtime, cuBLASLt, NCCL)"
scripts/check-gpu-link.sh "$build"
if command -v nvcc >/dev/null 2>&1; then
  echo "== the GPU bundle (scripts/gpu-bundle.sh: what scripts/gpu-check.sh runs, under 60 MiB)"
  scripts/gpu-bundle.sh "$build"
fi

echo "== ctest (label gpu excluded: this machine has no GPU)"
ctest --test-dir "$build" -LE gpu --output-on-failure -j2 --timeout 600

if [ -x scripts/fuzz.sh ]; then
  echo "== fuzz (bounded)"
  scripts/fuzz.sh
fi
echo "== router and worker state machines under ASan+UBSan"
scripts/sanitize.sh --quick
echo "== router and worker state machines, and a cluster, a failover and a drain, under TSan"
scripts/tsan.sh
if [ -x scripts/lint-proto.sh ]; then
  echo "== proto lint"
  scripts/lint-proto.sh
fi
echo "== deploy manifests"; scripts/validate-deploy.sh
echo "test.sh: all passed in $(( $(date +%s) - start ))s"
