#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU. Needs no network and no apt: it runs
# binaries already built (on any machine with the CUDA toolkit) in BUILD_DIR and copied here.
#
#   scripts/gpu-check.sh [BUILD_DIR]     (default: build)
#
# Runs, from the repository root (../shared must be beside it, as for the other tests):
#   1. the CUDA-vs-CPU op and sampler tests (tests/cuda_backend_test),
#   2. the NCCL link's single-rank self send/recv test (tests/nccl_link_test),
#   3. greedy stories260K and a synthetic BF16 model on GPU vs CPU (tests/cuda_model_test),
#   4. decode throughput at batch 1 and 32 on a synthetic Llama-3-8B-shape BF16 model made here
#      with `shardserve synth` (tests/cuda_decode_bench),
#   5. 2 CUDA worker processes on the one GPU behind a router against 1: the same greedy ids.
# scripts/gpu-bundle.sh packs what it needs into one archive to carry to such a machine.
# Writes a JSON report to $OUT/gpu-report.json when $OUT is set, else ./gpu-report.json, and
# keeps to a 6-minute budget (later steps are skipped, and reported so, when time runs out).
# Exit status: 0 all run steps passed; 1 a step failed; 2 no usable GPU or missing binaries
# (nothing run).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-build}"
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
REPORT="${OUT:+$OUT/}gpu-report.json"
case "$REPORT" in /*) ;; *) REPORT="$PWD/$REPORT" ;; esac
BUDGET_S=${GPU_CHECK_BUDGET_S:-350}
SYNTH_DIR="${SHARDSERVE_SYNTH_DIR:-${TMPDIR:-/tmp}/shardserve-llama3-8b-bf16}"
LOGS="$(mktemp -d)"
cd "$ROOT" || exit 2

# Shared libraries copied along with the binaries, then the toolkit's usual places.
for d in "$BUILD/lib" /usr/local/cuda/lib64 /usr/local/cuda/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

json_escape() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\t' '  '; }
STEPS=()  # JSON objects, one per step
add_step() {  # name status seconds detail-json-or-string
  local detail="$4"
  case "$detail" in \{*) ;; *) detail="\"$(printf '%s' "$detail" | json_escape)\"" ;; esac
  STEPS+=("{\"name\": \"$1\", \"status\": \"$2\", \"seconds\": $3, \"detail\": $detail}")
}
write_report() {  # overall-status device-json
  {
    printf '{\n  "status": "%s",\n  "device": %s,\n  "build_dir": "%s",\n  "total_seconds": %s,\n' \
      "$1" "$2" "$BUILD" "$SECONDS"
    printf '  "targets": {"batch1_decode_tokens_per_s": 210, "batch32_decode_tokens_per_s": 2500},\n'
    printf '  "steps": [\n'
    local i
    for i in "${!STEPS[@]}"; do
      printf '    %s%s\n' "${STEPS[$i]}" "$([ "$i" -lt $((${#STEPS[@]} - 1)) ] && echo ,)"
    done
    printf '  ]\n}\n'
  } >"$REPORT"
  echo "gpu-check: report written to $REPORT"
}

BENCH="$BUILD/tests/cuda_decode_bench"
# The GPU first: without one nothing else matters.
if [ -x "$BENCH" ] && ! DEVICE=$("$BENCH" --probe 2>"$LOGS/probe.err"); then
  echo "gpu-check: no usable GPU here, nothing run: $(cat "$LOGS/probe.err")" >&2
  add_step "probe" "no_gpu" 0 "$(cat "$LOGS/probe.err")"
  write_report "no_gpu" null
  exit 2
fi
NEEDED=("$BUILD/tests/cuda_backend_test" "$BUILD/tests/cuda_model_test" "$BUILD/tests/nccl_link_test"
        "$BENCH" "$BUILD/bin/shardserve" "$BUILD/bin/shardserve-worker" "$BUILD/bin/shardserve-router")
for b in "${NEEDED[@]}"; do
  if [ ! -x "$b" ]; then
    echo "gpu-check: missing $b: build the CUDA targets first (cmake with the CUDA toolkit, then" \
         "ninja cuda_backend_test cuda_model_test nccl_link_test cuda_decode_bench shardserve)" >&2
    add_step "binaries" "missing" 0 "$b"
    write_report "missing_binaries" null
    exit 2
  fi
  if missing=$(ldd "$b" 2>/dev/null | grep 'not found'); then
    echo "gpu-check: $b cannot find shared libraries: $missing" >&2
    add_step "binaries" "missing_libraries" 0 "$missing"
    write_report "missing_libraries" null
    exit 2
  fi
done
DEVICE=$("$BENCH" --probe) || exit 2
echo "gpu-check: device $DEVICE"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader 2>/dev/null | sed 's/^/gpu-check: nvidia-smi: /'

export SHARDSERVE_REQUIRE_GPU=1  # the tests fail instead of skipping
FAILED=0
left() { echo $((BUDGET_S - SECONDS)); }

run_test() {  # name binary timeout
  local start=$SECONDS
  if [ "$(left)" -lt 20 ]; then add_step "$1" "skipped_time_budget" 0 ""; return; fi
  local limit=$(( $3 < $(left) ? $3 : $(left) ))
  if timeout "$limit" "$2" --gtest_brief=1 >"$LOGS/$1.log" 2>&1; then
    add_step "$1" "passed" $((SECONDS - start)) "$(tail -n 3 "$LOGS/$1.log")"
  else
    FAILED=1
    add_step "$1" "failed" $((SECONDS - start)) "$(grep -E 'Failure|FAILED|error' "$LOGS/$1.log" | head -n 40)"
  fi
  echo "gpu-check: $1: ${STEPS[-1]:0:200}"
}

run_test "cuda_ops_vs_cpu" "$BUILD/tests/cuda_backend_test" 150
run_test "nccl_self_send_recv" "$BUILD/tests/nccl_link_test" 60
run_test "greedy_stories260k_and_synthetic_gpu_vs_cpu" "$BUILD/tests/cuda_model_test" 120

# Decode benchmark on a synthetic Llama-3-8B-shape BF16 model (about 16 GB on disk).
start=$SECONDS
if [ ! -f "$SYNTH_DIR/config.json" ]; then
  if [ "$(left)" -lt 150 ]; then
    add_step "synth_llama3_8b_bf16" "skipped_time_budget" 0 ""
  elif timeout $(( $(left) - 90 )) "$BUILD/bin/shardserve" synth --like llama3-8b --dtype bf16 \
      --out "$SYNTH_DIR" >"$LOGS/synth.log" 2>&1; then
    add_step "synth_llama3_8b_bf16" "passed" $((SECONDS - start)) "$SYNTH_DIR"
  else
    FAILED=1
    rm -rf "$SYNTH_DIR"
    add_step "synth_llama3_8b_bf16" "failed" $((SECONDS - start)) "$(tail -n 5 "$LOGS/synth.log")"
  fi
fi
for batch in 1 32; do
  start=$SECONDS
  if [ ! -f "$SYNTH_DIR/config.json" ]; then
    add_step "decode_bench_batch$batch" "skipped_no_model" 0 ""
    continue
  fi
  if [ "$(left)" -lt 30 ]; then
    add_step "decode_bench_batch$batch" "skipped_time_budget" 0 ""
    continue
  fi
  if out=$(timeout $(( $(left) - 5 )) "$BENCH" --model "$SYNTH_DIR" --batch "$batch" --prompt 32 \
      --steps "$([ "$batch" = 1 ] && echo 128 || echo 32)" 2>"$LOGS/bench$batch.err"); then
    add_step "decode_bench_batch$batch" "passed" $((SECONDS - start)) "$out"
  else
    FAILED=1
    add_step "decode_bench_batch$batch" "failed" $((SECONDS - start)) "$(tail -n 5 "$LOGS/bench$batch.err")"
  fi
  echo "gpu-check: decode batch $batch: ${STEPS[-1]:0:300}"
done

# A cluster of N CUDA workers (processes) on this GPU behind one router: prints the greedy ids of
# one completion as `shardserve complete --json` gives them. Two stages on one GPU use the gRPC
# link (one GPU cannot hold two ranks of an NCCL communicator).
cluster_ids() {  # stages
  local n=$1 dir="$LOGS/cluster$1" pids=() addresses=() i port
  mkdir -p "$dir"
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/secret"
  for ((i = 0; i < n; i++)); do
    "$BUILD/bin/shardserve-worker" --backend cuda --listen 127.0.0.1:0 --port-file "$dir/w$i.port" \
      --cluster-secret-file "$dir/secret" --model-root "$ROOT/../shared/models" >"$dir/w$i.log" 2>&1 &
    pids+=($!)
  done
  for ((i = 0; i < n; i++)); do
    for _ in $(seq 300); do [ -s "$dir/w$i.port" ] && break; sleep 0.2; done
    port=$(cat "$dir/w$i.port" 2>/dev/null) || { kill "${pids[@]}"; return 1; }
    addresses+=("127.0.0.1:$port")
  done
  "$BUILD/bin/shardserve-router" --listen 127.0.0.1:0 --port-file "$dir/r.port" \
    --workers "$(IFS=,; echo "${addresses[*]}")" --model "$ROOT/../shared/models/stories260K" \
    --cluster-secret-file "$dir/secret" >"$dir/router.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do [ -s "$dir/r.port" ] && break; sleep 0.2; done
  local out=""
  for _ in $(seq 120); do
    if out=$("$BUILD/bin/shardserve" complete --server "127.0.0.1:$(cat "$dir/r.port")" \
        --prompt "Once upon a time" --max-tokens 48 --temperature 0 --json 2>>"$dir/complete.err"); then
      break
    fi
    out=""
    sleep 0.5
  done
  kill "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
  [ -n "$out" ] && grep -o '"ids":\[[^]]*\]' <<<"$out"
}

start=$SECONDS
if [ "$(left)" -lt 90 ]; then
  add_step "two_stage_pipeline_one_gpu" "skipped_time_budget" 0 ""
elif one=$(cluster_ids 1) && two=$(cluster_ids 2) && [ "$one" = "$two" ]; then
  add_step "two_stage_pipeline_one_gpu" "passed" $((SECONDS - start)) "1 and 2 CUDA stages: $one"
else
  FAILED=1
  add_step "two_stage_pipeline_one_gpu" "failed" $((SECONDS - start)) \
    "1 stage: ${one:-none}; 2 stages: ${two:-none}; $(tail -n 3 "$LOGS"/cluster*/*.log 2>/dev/null)"
fi
echo "gpu-check: two stages on one GPU: ${STEPS[-1]:0:300}"

write_report "$([ $FAILED = 0 ] && echo passed || echo failed)" "$DEVICE"
echo "gpu-check: logs in $LOGS"
exit $FAILED
