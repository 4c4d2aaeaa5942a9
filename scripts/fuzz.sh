#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and runs each one for a
# bounded time from its committed seed corpus (fuzz/corpus/<target>/). Exits non-zero when a
# target crashes or fails to build.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30; FUZZ_TARGETS="..." picks targets)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
build="$root/build-fuzz"
targets=(tokenizer_json_fuzz tokenizer_encode_fuzz gguf_fuzz safetensors_fuzz config_fuzz
  step_plan_fuzz openai_request_fuzz worker_rpc_fuzz grammar_fuzz)
# FUZZ_TARGETS="a b" runs a subset.
if [ -n "${FUZZ_TARGETS:-}" ]; then read -r -a targets <<<"$FUZZ_TARGETS"; fi

if ! command -v clang++ >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null | grep -q "install ok installed"; then
  "$root/scripts/install-deps.sh"
fi

# Instrument the libraries too (coverage + sanitizers); the fuzz targets add -fsanitize=fuzzer.
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSHARDSERVE_FUZZ=ON -DSHARDSERVE_BUILD_TESTS=OFF \
  -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" \
  -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" >/dev/null
ninja -C "$build" -j"${FUZZ_JOBS:-2}" "${targets[@]}"

# Targets load ../shared test data relative to the repository root.
cd "$root"
status=0
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  cp -r "$root/fuzz/corpus/$t/." "$work/" 2>/dev/null || true
  echo "== $t: ${seconds}s"
  if ! UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
      "$build/fuzz/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix="$build/fuzz/$t-" "$work" 2>"$build/fuzz/$t.log"; then
    echo "$t FAILED; log: $build/fuzz/$t.log" >&2
    tail -n 40 "$build/fuzz/$t.log" >&2
    status=1
  else
    grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs" "$build/fuzz/$t.log" | tail -n 1 || true
  fi
  rm -rf "$work"
done
exit $status
