#!/usr/bin/env bash
# Engine benchmark: prefill and decode tokens/s of `shardserve generate` on synthetic models of
# real shapes, with 1 and 2 threads, plus the machine's read bandwidth and decode as a fraction
# of the bandwidth roofline. Prints a Markdown table; --json prints one JSON object per run.
#
#   bench/engine.sh [--build DIR] [--models DIR] [--shapes "llama-110m:f32 ..."] [--prompt 512]
#                   [--decode 128] [--threads "1 2"]
#
# A shape is NAME:DTYPE or NAME:DTYPE:QUANT (QUANT = q8_0 or q4_0, applied at load).
set -euo pipefail

build=build
models=${SHARDSERVE_BENCH_MODELS:-/tmp/shardserve-bench}
shapes="llama-110m:f32 llama-110m:bf16 tinyllama-1.1b:f16 tinyllama-1.1b:bf16 tinyllama-1.1b:f16:q8_0 tinyllama-1.1b:f16:q4_0"
prompt=512
decode=128
threads="1 2"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --shapes) shapes=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --decode) decode=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "error: unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
bin=$build/bin/shardserve
[ -x "$bin" ] || { echo "error: $bin not built (run scripts/build.sh)" >&2; exit 1; }
mkdir -p "$models"

bw=$(for s in 1 2 4 8; do "$build/bin/membw" --threads 2 --streams "$s" --reps 3; done |
     python3 -c 'import json,sys; print(max(json.loads(l)["read_gb_per_s"] for l in sys.stdin))')
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; read bandwidth (2 threads, best of 1-8 streams): $bw GB/s"
echo
echo "| shape | weights | threads | prefill tok/s ($prompt-token prompt) | decode tok/s | weight GB/token | decode / roofline |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
ids=$(python3 -c "print(','.join(str(300 + (i * 7919) % 31000) for i in range($prompt)))")
for sd in $shapes; do
  IFS=: read -r shape dtype quant <<<"$sd"
  quant=${quant:-none}
  dir=$models/$shape-$dtype
  [ -f "$dir/model.safetensors" ] || "$bin" synth --like "$shape" --dtype "$dtype" --out "$dir" >/dev/null 2>&1
  # Bytes read per decoded token: every layer matrix plus the LM head (the embedding is a lookup).
  gb=$(python3 - "$dir/config.json" "$dtype" "$quant" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
b = {"q8_0": 34 / 32, "q4_0": 18 / 32}.get(sys.argv[3], 4 if sys.argv[2] == "f32" else 2)
h, i, l, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
d = c.get("head_dim", h // c["num_attention_heads"])
per_layer = h * d * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"]) + 3 * h * i
print(f"{(l * per_layer + v * h) * b / 1e9:.3f}")
PY
)
  for t in $threads; do
    out=$("$bin" generate --model "$dir" --prompt-ids "$ids" --max-tokens "$decode" --temperature 0 \
          --ignore-eos --threads "$t" --quantize "$quant" --json)
    label=$dtype
    [ "$quant" = none ] || label="$quant (from $dtype)"
    python3 - "$out" "$shape" "$label" "$t" "$gb" "$bw" <<'PY'
import json, sys
d = json.loads(sys.argv[1]); shape, dtype, t, gb, bw = sys.argv[2:7]
dec = d["decode_tokens_per_s"]
print(f"| {shape} | {dtype} | {t} | {d['prefill_tokens_per_s']:.1f} | {dec:.2f} | {gb} | {dec * float(gb) / float(bw):.0%} |")
PY
  done
done
