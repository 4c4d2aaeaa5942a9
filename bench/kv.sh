#!/usr/bin/env bash
# KV cache benchmark: a multi-turn chat workload (`shardserve bench --scenario chat`: each turn
# resends the conversation so far plus new user tokens) against local routers on the synthetic
# 110M model, reporting time to first token on the first and on later turns for
#   A. one pipeline with prefix caching      vs  B. the same with --no-prefix-cache
#   C. two replicas, --routing prefix        vs  D. two replicas, --routing least-loaded
# Every configuration runs one worker thread per core in total (A/B: 1 worker x 2 threads;
# C/D: 2 single-stage replicas x 1 thread). Configurations run one after another, each on its
# own fresh processes, and the pairs are compared as ratios. Prints a Markdown table.
#
#   bench/kv.sh [--build DIR] [--model DIR] [--conversations 32] [--turns 4] [--concurrency 8]
#               [--prompt-tokens 256] [--user-tokens 32] [--max-tokens 32] [--port 50420]
#               [--only "A B C D"]
set -euo pipefail

build=build
model=${SHARDSERVE_BENCH_MODEL:-/tmp/shardserve-bench/llama-110m-f32}
conversations=32
turns=4
concurrency=8
prompt_tokens=256
user_tokens=32
max_tokens=32
port=50420
only="A B C D"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --conversations) conversations=$2; shift 2 ;;
    --turns) turns=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --prompt-tokens) prompt_tokens=$2; shift 2 ;;
    --user-tokens) user_tokens=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "error: unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
. "$(dirname "$0")/lib.sh"
bench_setup "$build" "$model" shardserve-kv-bench

# run NAME REPLICAS THREADS_PER_WORKER ROUTER_FLAGS...
run() {
  local name=$1 replicas=$2 threads=$3
  shift 3
  case " $only " in *" ${name%%-*} "*) ;; *) return 0 ;; esac
  local workers=()
  for i in $(seq "$replicas"); do
    local w=127.0.0.1:$((port + i))
    bench_start "$bin/shardserve-worker" --listen "$w" --threads "$threads" \
      >"$logs/$name-worker-$i.log" 2>&1
    workers+=("$w")
  done
  local router=127.0.0.1:$port
  bench_start "$bin/shardserve-router" --listen "$router" --model "$model" --replicas "$replicas" \
    --workers "$(IFS=,; echo "${workers[*]}")" "$@" >"$logs/$name-router.log" 2>&1
  bench_wait_router "$router"
  local out
  out=$("$bin/shardserve" bench --server "$router" --scenario chat --requests "$conversations" \
        --turns "$turns" --concurrency "$concurrency" --prompt-tokens "$prompt_tokens" \
        --user-tokens "$user_tokens" --max-tokens "$max_tokens" --json)
  echo "{\"name\": \"$name\", \"result\": $out}" >>"$results"
  bench_stop_all
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
run A-prefix-cache 1 2
run B-no-prefix-cache 1 2 --no-prefix-cache
run C-2-replicas-prefix-routing 2 1 --routing prefix
run D-2-replicas-least-loaded 2 1 --routing least-loaded

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
  "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $model; $conversations conversations x $turns turns," \
  "concurrency $concurrency; first prompt $prompt_tokens tokens, +$user_tokens user tokens and" \
  "$max_tokens generated per turn"
echo
python3 - "$results" <<'PY'
import json, sys
rows = {r["name"]: r["result"] for r in map(json.loads, open(sys.argv[1]))}
print("| configuration | TTFT p50 first turn ms | TTFT p50 later turns ms | later-turn p50 ratio "
      "| TTFT p99 later ms | tokens/s | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
pairs = {"A-prefix-cache": "B-no-prefix-cache", "C-2-replicas-prefix-routing": "D-2-replicas-least-loaded"}
for name, b in rows.items():
    base = rows.get(pairs.get(name, ""))
    ratio = f"{base['ttft_ms_p50_later_turns'] / b['ttft_ms_p50_later_turns']:.2f}x lower" if base else ""
    print(f"| {name} | {b['ttft_ms_p50_first_turn']:.1f} | {b['ttft_ms_p50_later_turns']:.1f} | "
          f"{ratio} | {b['ttft_ms_p99_later_turns']:.1f} | {b['throughput_tokens_per_s']:.1f} | "
          f"{b['errors']} |")
PY
echo
echo "raw results: $results"
