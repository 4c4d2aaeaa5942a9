#!/usr/bin/env bash
# Builds the unit tests with clang under AddressSanitizer + UndefinedBehaviorSanitizer in
# build-asan/ and runs `ctest -L unit` there. Any sanitizer report fails the run: UBSan does not
# recover, ASan aborts on the first error.
#   scripts/sanitize.sh [--quick] [ctest args...]
# --quick (what scripts/test.sh runs in CI) builds and runs only the tests of the router's
# scheduler, KV cache, failover bookkeeping, worker registry and request handling and of the
# worker's stage runtime (the concurrent, network-facing state machines), and of the grammar
# engine and tool-call parser, which read what requests send.
set -euo pipefail

quick=
if [ "${1:-}" = "--quick" ]; then quick=1; shift; fi

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
quick_tests=(tests/router_scheduler_test tests/router_kv_cache_test tests/router_worker_registry_test
  tests/router_inference_service_test tests/router_placement_validation_test
  tests/worker_stage_runtime_test tests/router_tool_calls_test tests/grammar_test)
if [ -n "$quick" ]; then targets=("${quick_tests[@]}"); fi
echo "== building ${#targets[@]} unit tests under ASan+UBSan in $build"
ninja -C "$build" -j"${ASAN_JOBS:-2}" "${targets[@]}"

echo "== running them (ASan+UBSan)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
if [ -n "$quick" ]; then
  # Only the tests built above (ctest lists every test; the rest have no executable here).
  for t in "${quick_tests[@]}"; do
    echo "-- ${t#tests/}"
    (cd "$root" && "$build/$t" --gtest_brief=1)
  done
else
  ctest --test-dir "$build" -L unit --output-on-failure -j"${ASAN_JOBS:-2}" --timeout 900 "$@"
fi
echo "sanitize.sh: passed in $(( $(date +%s) - start ))s"
