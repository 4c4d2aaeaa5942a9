# Shared by the cluster benchmark scripts (sourced, not run): checks the binaries, makes the
# synthetic model when it is missing, keeps the processes started so that they stop on exit, and
# waits for a router to answer.
#   bench_setup BUILD_DIR MODEL_DIR LOG_PREFIX   sets bin, logs, results; arms the exit trap
#   bench_start CMD...                           starts CMD in the background, remembered
#   bench_stop_all                               SIGINT to every process started, then waits
#   bench_wait_router ADDR                       until ADDR serves a 2-token request (or exit 1)

bench_setup() {
  bin=$1/bin
  local model=$2
  for b in shardserve shardserve-router shardserve-worker; do
    [ -x "$bin/$b" ] || { echo "error: $bin/$b not built (run scripts/build.sh)" >&2; exit 1; }
  done
  if [ ! -f "$model/config.json" ]; then
    mkdir -p "$(dirname "$model")"
    "$bin/shardserve" synth --like llama-110m --dtype f32 --out "$model" >/dev/null
  fi
  logs=$(mktemp -d "/tmp/$3-XXXXXX")
  results=$logs/results.jsonl
  # The cluster credential every router and worker started here reads.
  if [ -z "${SHARDSERVE_CLUSTER_SECRET_FILE:-}" ]; then
    (umask 077 && openssl rand -hex 32 >"$logs/cluster-secret")
    export SHARDSERVE_CLUSTER_SECRET_FILE=$logs/cluster-secret
  fi
  bench_pids=()
  trap bench_stop_all EXIT
}

bench_start() {
  "$@" &
  bench_pids+=($!)
}

bench_stop_all() {
  for p in "${bench_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${bench_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bench_pids=()
}

bench_wait_router() {
  for _ in $(seq 600); do
    if "$bin/shardserve" bench --server "$1" --concurrency 1 --requests 1 \
         --prompt-tokens 8 --max-tokens 2 --json >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "error: router $1 did not serve; see $logs" >&2
  exit 1
}
