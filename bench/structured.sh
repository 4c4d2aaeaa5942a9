#!/usr/bin/env bash
# Structured-output benchmark: decode throughput of a 2-stage local cluster (the synthetic 110M
# model, 1 thread per worker) with every output constrained by a JSON schema, and by
# json_object, against the same load unconstrained. The runs alternate (free, schema, object,
# free, ...) on one cluster, so each ratio compares figures taken under the same machine load;
# medians over --rounds. Then grammar_bench's per-token mask times and schema compile times.
#
#   bench/structured.sh [--build DIR] [--model DIR] [--concurrency 8] [--max-tokens 64]
#                       [--rounds 5] [--schema NAME] [--port 50394]
#
# NAME is a schema of tests/structured/schemas.json (default wide_object).
set -euo pipefail

build=build
model=${SHARDSERVE_BENCH_MODEL:-/tmp/shardserve-bench/llama-110m-f32}
concurrency=8
max_tokens=64
rounds=5
schema=wide_object
port=50394
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --schema) schema=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    *) echo "error: unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
. "$(dirname "$0")/lib.sh"
bench_setup "$build" "$model" shardserve-structured-bench
python3 - "$root/tests/structured/schemas.json" "$schema" >"$logs/schema.json" <<'PY'
import json, sys
schemas = json.load(open(sys.argv[1]))
if sys.argv[2] not in schemas:
    sys.exit(f"error: no schema {sys.argv[2]!r} in {sys.argv[1]}")
print(json.dumps(schemas[sys.argv[2]]))
PY

log=$logs/up.log
bench_start "$bin/shardserve" up --workers 2 --threads 1 --model "$model" \
  --listen "127.0.0.1:$port" >"$log" 2>&1
for _ in $(seq 600); do
  grep -q "shardserve is up" "$log" && break
  kill -0 "${bench_pids[-1]}" 2>/dev/null || { echo "error: shardserve up failed; see $log" >&2; exit 1; }
  sleep 0.2
done
grep -q "shardserve is up" "$log" || { echo "error: no cluster after 120 s; see $log" >&2; exit 1; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
requests=$((4 * concurrency))
for round in $(seq "$rounds"); do
  for kind in free schema object; do
    case $kind in
      free) format=() ;;
      schema) format=(--response-format "json_schema:$logs/schema.json") ;;
      object) format=(--response-format json_object) ;;
    esac
    out=$("$bin/shardserve" bench --server "127.0.0.1:$port" --concurrency "$concurrency" \
          --requests "$requests" --prompt-tokens 32 --max-tokens "$max_tokens" \
          --temperature 1 "${format[@]}" --json)
    echo "{\"round\": $round, \"kind\": \"$kind\", \"result\": $out}" >>"$results"
  done
done

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
  "load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $model (2 stages x 1 thread); concurrency $concurrency, $requests requests of" \
  "up to $max_tokens tokens at temperature 1 per run, $rounds rounds; schema: $schema"
echo
python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(kind, key):
    return statistics.median(r["result"][key] for r in runs if r["kind"] == kind)
for r in runs:
    if r["result"]["errors"]:
        sys.exit(f"error: {r['kind']} round {r['round']}: {r['result']['error_messages']}")
free = med("free", "throughput_tokens_per_s")
free_itl = med("free", "itl_ms_p50")
print("| output | tokens/s (median) | / unconstrained | ITL p50 ms | decode / unconstrained (ITL) | output tokens per request |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for kind, label in (("free", "unconstrained"), ("schema", "json_schema"), ("object", "json_object")):
    tps = med(kind, "throughput_tokens_per_s")
    itl = med(kind, "itl_ms_p50")
    per = med(kind, "output_tokens") / runs[0]["result"]["requests"]
    print(f"| {label} | {tps:.1f} | {tps / free:.3f} | {itl:.2f} | {free_itl / itl:.3f} | {per:.1f} |")
PY
echo
tok=$build/testdata/tokenizers/llama3
if [ -d "$tok" ]; then
  echo "grammar_bench (Llama-3 tokenizer, 128k tokens):"
  "$build/bin/grammar_bench" --tokenizer "$tok" --schemas "$root/tests/structured/schemas.json" | tail -6
fi
