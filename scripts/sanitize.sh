#!/usr/bin/env bash
# Builds the unit tests with clang under AddressSanitizer + UndefinedBehaviorSanitizer in
# build-asan/ and runs `ctest -L unit` there. Any sanitizer report fails the run: UBSan does not
# recover, ASan aborts on the first error.
#   scripts/sanitize.sh [ctest args...]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${SHARDSERVE_ASAN_BUILD_DIR:-$root/build-asan}
start=$(date +%s)

if ! command -v clang++ >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null | grep -q "install ok installed"; then
  "$root/scripts/install-deps.sh"
fi

flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSHARDSERVE_BUILD_TESTS=ON -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null

# Unit-test executables only: the e2e and API suites (label e2e) start real processes and the
# CUDA/NCCL ones need a GPU.
mapfile -t targets < <(ninja -C "$build" -t targets all | grep -oE '^tests/[a-z0-9_]+:' | tr -d : |
  grep -vE '^tests/(e2e_|api_|cuda_|nccl_|all$|test$|edit_cache$|rebuild_cache$|install)')
echo "== building ${#targets[@]} unit tests under ASan+UBSan in $build"
ninja -C "$build" -j"${ASAN_JOBS:-2}" "${targets[@]}"

echo "== ctest -L unit (ASan+UBSan)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
ctest --test-dir "$build" -L unit --output-on-failure -j"${ASAN_JOBS:-2}" --timeout 900 "$@"
echo "sanitize.sh: passed in $(( $(date +%s) - start ))s"
