#!/usr/bin/env bash
# Chunked prefill benchmark: inter-token latency of running decode streams while long prompts
# arrive, for several --max-batch-tokens (the prefill chunk per micro-batch). One router and one
# worker (2 threads) on the synthetic 110M model; `shardserve bench` runs --decoders short-prompt
# streams while a second `shardserve bench` sends --long-requests prompts of --long-tokens tokens,
# one at a time. Prints a Markdown table of the decode streams' ITL and the long prompts' TTFT.
#
#   bench/chunked_prefill.sh [--build DIR] [--model DIR] [--chunks "64 256 1024"]
#                            [--long-tokens 900] [--long-requests 6] [--decoders 4] [--port 50440]
set -euo pipefail

build=build
model=${SHARDSERVE_BENCH_MODEL:-/tmp/shardserve-bench/llama-110m-f32}
chunks="64 256 1024"
long_tokens=900
long_requests=6
decoders=4
port=50440
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --chunks) chunks=$2; shift 2 ;;
    --long-tokens) long_tokens=$2; shift 2 ;;
    --long-requests) long_requests=$2; shift 2 ;;
    --decoders) decoders=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    *) echo "error: unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
. "$(dirname "$0")/lib.sh"
bench_setup "$build" "$model" shardserve-chunk-bench

for chunk in $chunks; do
  w=127.0.0.1:$((port + 1)) router=127.0.0.1:$port
  bench_start "$bin/shardserve-worker" --listen "$w" --threads 2 >"$logs/worker-$chunk.log" 2>&1
  bench_start "$bin/shardserve-router" --listen "$router" --model "$model" --workers "$w" \
    --max-batch-tokens "$chunk" --no-prefix-cache >"$logs/router-$chunk.log" 2>&1
  bench_wait_router "$router"
  # Long prompts start once the decode streams are running, and end before them.
  "$bin/shardserve" bench --server "$router" --concurrency "$decoders" --requests "$decoders" \
    --prompt-tokens 16 --max-tokens 400 --json >"$logs/decode-$chunk.json" &
  decode=$!
  sleep 2
  "$bin/shardserve" bench --server "$router" --concurrency 1 --requests "$long_requests" \
    --prompt-tokens "$long_tokens" --max-tokens 1 --json >"$logs/long-$chunk.json"
  wait "$decode"
  echo "{\"chunk\": $chunk, \"decode\": $(cat "$logs/decode-$chunk.json"), \"long\": $(cat "$logs/long-$chunk.json")}" >>"$results"
  bench_stop_all
done

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "model: $model; $decoders decode streams (16-token prompts, 400 tokens) while" \
  "$long_requests prompts of $long_tokens tokens arrive one at a time"
echo
python3 - "$results" <<'PY'
import json, sys
print("| --max-batch-tokens | decode ITL p50 ms | decode ITL p99 ms | long-prompt TTFT p50 ms | errors |")
print("| ---: | ---: | ---: | ---: | ---: |")
for r in map(json.loads, open(sys.argv[1])):
    d, l = r["decode"], r["long"]
    print(f"| {r['chunk']} | {d['itl_ms_p50']:.1f} | {d['itl_ms_p99']:.1f} | {l['ttft_ms_p50']:.0f} | "
          f"{d['errors'] + l['errors']} |")
PY
echo
echo "raw results: $results"
