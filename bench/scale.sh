#!/usr/bin/env bash
# Cluster scale on simulated accelerators (docs/SCALING.md): the real router, workers, links and
# gRPC clients, with every stage a `shardserve-worker --backend sim` whose steps take the cost
# model's time. Each measurement is set against `shardserve predict`'s analytic bound for the
# same pipeline, and the workers' shardserve_stage_busy_seconds_total give each stage's busy
# fraction and the pipeline efficiency.
#
#   bench/scale.sh [--build DIR] [--out DIR] [--only depth|distance|large|ceiling|all]
#                  [--quick]
#
# Sections:
#   depth     Llama-3-8B on 1, 2, 4, 8, 16 sim-H200 stages, concurrency 1 to 512
#   distance  Llama-3-70B on 4 stages with 0.005, 0.5 and 2 ms per hop, concurrency 64 and 256
#   large     Llama-3-70B on 8 stages x 2 replicas; Llama-3-70B on 8 stages at 0.005 and 2 ms
#             hops (the efficiency targets); DeepSeek-V3 on 16 stages, concurrency 64 to 512
#   ceiling   near-zero step time: the most tokens/s one router streams to gRPC clients
#
# Writes OUT/results.jsonl (one JSON object per measurement), OUT/depth.svg (throughput against
# concurrency per depth, with the bounds) and prints Markdown tables. --quick runs fewer points.
set -euo pipefail

build=build
out=
only=all
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "error: unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
shapes=/tmp/shardserve-bench/shapes
bench_setup "$build" /tmp/shardserve-bench/llama-110m-f32 shardserve-scale
[ -n "$out" ] || out=$logs
mkdir -p "$out"
results=$out/results.jsonl
for like in llama3-8b llama3-70b deepseek-v3; do
  [ -f "$shapes/$like/config.json" ] ||
    "$bin/shardserve" synth --like "$like" --config-only --out "$shapes/$like" 2>/dev/null
done

# start_cluster MODEL STAGES REPLICAS DEVICE_ARGS...: sim workers and a router; sets router,
# workers_metrics and cluster_pids.
start_cluster() {
  local model=$1 stages=$2 replicas=$3
  shift 3
  local n=$((stages * replicas)) addrs="" metrics=""
  local dir
  dir=$(mktemp -d "$logs/cluster-XXXX")
  cluster_pids=()
  trap 'stop_cluster; bench_stop_all' EXIT
  for i in $(seq 0 $((n - 1))); do
    "$bin/shardserve-worker" --listen 127.0.0.1:0 --port-file "$dir/port$i" \
      --metrics-listen 127.0.0.1:0 --backend sim "$@" 2>"$dir/worker$i.log" &
    cluster_pids+=($!)
  done
  for i in $(seq 0 $((n - 1))); do
    for _ in $(seq 600); do [ -s "$dir/port$i" ] && grep -q "metrics on" "$dir/worker$i.log" && break; sleep 0.05; done
    addrs="$addrs${addrs:+,}127.0.0.1:$(cat "$dir/port$i")"
    metrics="$metrics${metrics:+,}127.0.0.1:$(grep -o 'metrics on [^ ]* (port [0-9]*' "$dir/worker$i.log" | grep -o '[0-9]*$')"
  done
  "$bin/shardserve-router" --listen 127.0.0.1:0 --workers "$addrs" --model "$model" \
    --stages "$stages" --replicas "$replicas" --max-seqs 512 --max-batch-tokens 8192 \
    --max-queued-requests 4096 2>"$dir/router.log" &
  cluster_pids+=($!)
  for _ in $(seq 1200); do grep -q "health: SERVING" "$dir/router.log" && break; sleep 0.05; done
  grep -q "health: SERVING" "$dir/router.log" || { echo "error: cluster did not serve; see $dir" >&2; exit 1; }
  router=127.0.0.1:$(grep -o 'shardserve-router on [^ ]* (port [0-9]*' "$dir/router.log" | grep -o '[0-9]*$')
  workers_metrics=$metrics
  cluster_dir=$dir
}

stop_cluster() {
  for p in "${cluster_pids[@]+"${cluster_pids[@]}"}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${cluster_pids[@]+"${cluster_pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
  cluster_pids=()
}

# measure SECTION LABEL MODEL STAGES REPLICAS CONCURRENCY MAX_TOKENS LATENCY_US [metrics]:
# one bench run against the running cluster and its bound; appends to results.jsonl.
measure() {
  local section=$1 label=$2 model=$3 stages=$4 replicas=$5 conc=$6 max_tokens=$7 lat=$8
  local with_metrics=${9:-1}
  local requests=$((conc * 2 > 32 ? conc * 2 : 32))
  local metrics_flag=()
  [ "$with_metrics" = 1 ] && [ "$replicas" = 1 ] && metrics_flag=(--worker-metrics "$workers_metrics")
  local b p
  b=$("$bin/shardserve" bench --server "$router" --concurrency "$conc" --requests "$requests" \
        --prompt-tokens 64 --max-tokens "$max_tokens" --json "${metrics_flag[@]}")
  p=$("$bin/shardserve" predict --model "$model" --stages "$stages" --device h200 \
        --link-latency-us "$lat" --concurrency $(((conc + replicas - 1) / replicas)) \
        --prompt-tokens 64 --max-tokens "$max_tokens" --max-seqs 512 --json)
  python3 - "$section" "$label" "$stages" "$replicas" "$conc" "$lat" "$b" "$p" >>"$results" <<'EOF'
import json, sys
section, label, stages, replicas, conc, lat, b, p = sys.argv[1:]
b, p = json.loads(b), json.loads(p)
bound = p["bound_tokens_per_s"] * int(replicas)
print(json.dumps({"section": section, "label": label, "stages": int(stages),
                  "replicas": int(replicas), "concurrency": int(conc),
                  "hop_latency_us": float(lat), "bench": b, "predict": p,
                  "throughput": b["throughput_tokens_per_s"], "bound": bound,
                  "of_bound": b["throughput_tokens_per_s"] / bound if bound else 0}))
EOF
  python3 "$here/scale_report.py" --last "$results" >&2
}

run_depth() {
  local model=$shapes/llama3-8b concs="1 4 16 64 256 512" depths="1 2 4 8 16"
  [ "$quick" = 1 ] && concs="1 64 512" && depths="1 4 16"
  for s in $depths; do
    start_cluster "$model" "$s" 1 --sim-device h200
    for c in $concs; do measure depth "llama3-8b x$s" "$model" "$s" 1 "$c" 128 5; done
    stop_cluster
  done
}

run_distance() {
  local model=$shapes/llama3-70b
  for lat in 5 500 2000; do
    start_cluster "$model" 4 1 --sim-device h200 --sim-link-latency-us "$lat"
    for c in 64 256; do measure distance "llama3-70b x4 ${lat}us" "$model" 4 1 "$c" 128 "$lat"; done
    stop_cluster
  done
}

run_large() {
  local m70=$shapes/llama3-70b mds=$shapes/deepseek-v3
  for lat in 5 2000; do
    start_cluster "$m70" 8 1 --sim-device h200 --sim-link-latency-us "$lat"
    for c in 64 128; do measure large "llama3-70b x8 ${lat}us" "$m70" 8 1 "$c" 128 "$lat"; done
    stop_cluster
  done
  start_cluster "$m70" 8 2 --sim-device h200
  for c in 64 256; do measure large "llama3-70b 8x2" "$m70" 8 2 "$c" 128 5; done
  stop_cluster
  start_cluster "$mds" 16 1 --sim-device h200
  local concs="64 128 256 512"
  [ "$quick" = 1 ] && concs="64 512"
  for c in $concs; do measure large "deepseek-v3 x16" "$mds" 16 1 "$c" 128 5; done
  stop_cluster
}

run_ceiling() {
  # A profile with near-zero step time: what remains is the router, the links and the clients.
  printf '{"name": "instant", "memory_bandwidth_gbps": 1000000, "tflops": 1000000, "step_overhead_us": 0, "link_latency_us": 0}\n' >"$logs/instant.json"
  local model=$shapes/llama3-8b
  start_cluster "$model" 1 1 --sim-profile "$logs/instant.json"
  for c in 64 256 512; do measure ceiling "router, instant stage" "$model" 1 1 "$c" 256 0 0; done
  stop_cluster
}

case "$only" in
  depth) run_depth ;;
  distance) run_distance ;;
  large) run_large ;;
  ceiling) run_ceiling ;;
  all) run_depth; run_distance; run_large; run_ceiling ;;
  *) echo "error: --only $only: depth, distance, large, ceiling or all" >&2; exit 2 ;;
esac
python3 "$here/scale_report.py" "$results" "$out"
