#!/usr/bin/env bash
# Cluster benchmark: `shardserve bench` against a local cluster on the synthetic 110M model,
# 1 stage (1 worker x 2 threads) versus 2 stages (2 workers x 1 thread), at several
# concurrencies, plus `shardserve generate`'s inter-token latency with the same 2 threads.
# Both clusters stay up (an idle one uses no CPU) and every measurement of one configuration is
# followed at once by the same measurement of the other, so the 2-stage / 1-stage ratio and the
# ITL difference compare figures taken under the same machine load. Prints a Markdown table.
#
#   bench/cluster.sh [--build DIR] [--model DIR] [--concurrency "1 8 32"] [--prompt-tokens 32]
#                    [--max-tokens 64] [--threads 2] [--repeat 1] [--port 50390]
#
# Uses ports --port and --port + 1.
set -euo pipefail

build=build
model=${SHARDSERVE_BENCH_MODEL:-/tmp/shardserve-bench/llama-110m-f32}
concurrency="1 8 32"
prompt_tokens=32
max_tokens=64
threads=2
repeat=1
port=50390
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --prompt-tokens) prompt_tokens=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    *) echo "error: unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
. "$(dirname "$0")/lib.sh"
bench_setup "$build" "$model" shardserve-cluster-bench

# Starts `shardserve up` with $1 workers of $2 threads each on port $3 and waits until it serves.
# An idle cluster uses no CPU, so both configurations stay up and their runs alternate.
start_cluster() {
  local workers=$1 per_worker=$2 p=$3 log=$logs/up-$1x$2.log
  bench_start "$bin/shardserve" up --workers "$workers" --threads "$per_worker" --model "$model" \
    --listen "127.0.0.1:$p" >"$log" 2>&1
  for _ in $(seq 600); do
    grep -q "shardserve is up" "$log" && break
    kill -0 "${bench_pids[-1]}" 2>/dev/null || { echo "error: shardserve up failed; see $log" >&2; exit 1; }
    sleep 0.2
  done
  grep -q "shardserve is up" "$log" || { echo "error: no cluster after 120 s; see $log" >&2; exit 1; }
  # One warm-up request so that first-touch page faults stay out of the figures.
  "$bin/shardserve" bench --server "127.0.0.1:$p" --concurrency 1 --requests 1 \
    --prompt-tokens "$prompt_tokens" --max-tokens 8 --json >/dev/null
}

start_cluster 1 "$threads" "$port"
start_cluster 2 $((threads / 2)) $((port + 1))
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
ids=$(python3 -c "print(','.join(str(300 + (i * 7919) % 31000) for i in range($prompt_tokens)))")
for rep in $(seq "$repeat"); do
  for c in $concurrency; do
    if [ "$c" = 1 ]; then
      gen=$("$bin/shardserve" generate --model "$model" --prompt-ids "$ids" --max-tokens "$max_tokens" \
            --temperature 0 --ignore-eos --threads "$threads" --json)
      echo "{\"rep\": $rep, \"kind\": \"generate\", \"result\": $gen}" >>"$results"
    fi
    requests=$((2 * c > 4 ? 2 * c : 4))
    for stages in 1 2; do
      out=$("$bin/shardserve" bench --server "127.0.0.1:$((port + stages - 1))" --concurrency "$c" \
            --requests "$requests" --prompt-tokens "$prompt_tokens" --max-tokens "$max_tokens" --json)
      echo "{\"rep\": $rep, \"kind\": \"bench\", \"stages\": $stages, \"result\": $out}" >>"$results"
    done
  done
done

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
  "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $model (llama-110m shape, f32); prompt $prompt_tokens tokens, $max_tokens generated;" \
  "$threads compute threads in total"
echo
python3 - "$results" "$threads" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
threads = int(sys.argv[2])
print("| rep | stages | workers x threads | concurrency | tokens/s | 2-stage / 1-stage | TTFT p50 ms "
      "| ITL p50 ms | ITL p99 ms | ITL p50 - generate's ms | errors |")
print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for rep in sorted({r["rep"] for r in rows}):
    gen = next((r["result"] for r in rows if r["rep"] == rep and r["kind"] == "generate"), None)
    gen_itl = 1000.0 / gen["decode_tokens_per_s"] if gen else None
    if gen:
        print(f"| {rep} | generate | 1 x {threads} | 1 | {gen['decode_tokens_per_s']:.1f} | | | "
              f"{gen_itl:.2f} | | | 0 |")
    bench = [r for r in rows if r["rep"] == rep and r["kind"] == "bench"]
    single = {r["result"]["concurrency"]: r["result"] for r in bench if r["stages"] == 1}
    for r in bench:
        b, s = r["result"], r["stages"]
        ratio = ""
        if s != 1 and b["concurrency"] in single:
            ratio = f"{b['throughput_tokens_per_s'] / single[b['concurrency']]['throughput_tokens_per_s']:.2f}"
        delta = f"{b['itl_ms_p50'] - gen_itl:+.2f}" if b["concurrency"] == 1 and gen else ""
        print(f"| {rep} | {s} | {s} x {threads // s} | {b['concurrency']} | "
              f"{b['throughput_tokens_per_s']:.1f} | {ratio} | {b['ttft_ms_p50']:.1f} | "
              f"{b['itl_ms_p50']:.2f} | {b['itl_ms_p99']:.2f} | {delta} | {b['errors']} |")
PY
echo
echo "raw results: $results"
