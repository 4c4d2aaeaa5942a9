#!/usr/bin/env bash
# Side-by-side CPU benchmark against llama.cpp on the same GGUF files, in one run: alternates
# `shardserve generate --json` and llama.cpp's `llama-bench` with the same threads, prompt length
# and generated tokens, for several rounds, and prints the medians, the ratios (shardserve over
# llama.cpp) and the decode roofline (weight bytes per token over the read bandwidth, measured at
# the start of every round; the median).
#
#   bench/vs_llamacpp.sh --llama-bench PATH [--rounds 3] [--threads 2] [--prompt 562]
#                        [--gen 128] [--build DIR] [--json FILE] MODEL.gguf...
#   bench/vs_llamacpp.sh --llama-bench PATH --make-models DIR --llama-quantize PATH [...]
#
# --make-models writes the standard set into DIR (kept between runs) and benchmarks it: the
# TinyLlama-1.1B shape from `shardserve synth` as F16 (`shardserve export-gguf`), then Q8_0, Q4_0,
# Q4_K_M, Q5_K_M, Q6_K and IQ4_NL made from it by llama.cpp's own `llama-quantize`, and the 110M
# shape as F32.
#
# llama-bench and llama-quantize come from a llama.cpp source tree built by hand, e.g.
#   cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
#   ninja -C build llama-bench llama-quantize
# Prefill is llama-bench's pp<prompt> test; decode is tg<gen> at depth <prompt> (-d), the same
# position shardserve decodes at after the prompt.
set -euo pipefail

build=build
llama_bench=
llama_quantize=
make_models=
rounds=3
threads=2
prompt=562
gen=128
json_out=
models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --llama-bench) llama_bench=$2; shift 2 ;;
    --llama-quantize) llama_quantize=$2; shift 2 ;;
    --make-models) make_models=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --prompt) prompt=$2; shift 2 ;;
    --gen) gen=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --json) json_out=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown flag $1 (see the header of $0)" >&2; exit 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
bin=$build/bin/shardserve
[ -x "$bin" ] || { echo "error: $bin not built (run scripts/build.sh)" >&2; exit 1; }
[ -n "$llama_bench" ] || { echo "error: --llama-bench PATH is required (see the header of $0)" >&2; exit 2; }
[ -x "$llama_bench" ] || { echo "error: --llama-bench $llama_bench is not an executable" >&2; exit 2; }

if [ -n "$make_models" ]; then
  [ -x "$llama_quantize" ] || { echo "error: --make-models needs --llama-quantize PATH" >&2; exit 2; }
  mkdir -p "$make_models"
  m=$make_models
  if [ ! -f "$m/tinyllama-f16.gguf" ]; then
    [ -f "$m/tinyllama/config.json" ] || "$bin" synth --like tinyllama-1.1b --dtype f16 --out "$m/tinyllama" >&2
    "$bin" export-gguf --model "$m/tinyllama" --out "$m/tinyllama-f16.gguf" --dtype f16 >&2
  fi
  for q in Q8_0 Q4_0 Q4_K_M Q5_K_M Q6_K IQ4_NL; do
    f=$m/tinyllama-$(echo "$q" | tr 'A-Z' 'a-z').gguf
    [ -f "$f" ] || "$llama_quantize" "$m/tinyllama-f16.gguf" "$f" "$q" "$threads" >"$f.log" 2>&1 ||
      { echo "error: llama-quantize $q failed (log: $f.log)" >&2; exit 1; }
  done
  if [ ! -f "$m/llama-110m-f32.gguf" ]; then
    [ -f "$m/llama-110m/config.json" ] || "$bin" synth --like llama-110m --dtype f32 --out "$m/llama-110m" >&2
    "$bin" export-gguf --model "$m/llama-110m" --out "$m/llama-110m-f32.gguf" --dtype f32 >&2
  fi
  models+=("$m/tinyllama-f16.gguf" "$m/tinyllama-q8_0.gguf" "$m/tinyllama-q4_0.gguf"
           "$m/tinyllama-q4_k_m.gguf" "$m/tinyllama-q5_k_m.gguf" "$m/tinyllama-q6_k.gguf"
           "$m/tinyllama-iq4_nl.gguf" "$m/llama-110m-f32.gguf")
fi
[ ${#models[@]} -gt 0 ] || { echo "error: no MODEL.gguf given" >&2; exit 2; }
for f in "${models[@]}"; do
  [ -f "$f" ] || { echo "error: no such model file: $f" >&2; exit 2; }
done

work=$(mktemp -d /tmp/vs-llamacpp-XXXXXX)
runs=$work/runs.jsonl
# The read bandwidth: the best of 1, 2, 4 and 8 streams per thread (which is fastest depends on
# the CPU), measured at the start of every round; the roofline uses the median, as the speeds do.
bandwidth() {
  for s in 1 2 4 8; do "$build/bin/membw" --threads "$threads" --streams "$s" --reps 3; done |
    python3 -c 'import json,sys; print(max(json.loads(l)["read_gb_per_s"] for l in sys.stdin))'
}
bws=()
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
echo "machine: $cpu, $(nproc) cores" >&2
ids=$(python3 -c "print(','.join(str(300 + (i * 7919) % 31000) for i in range($prompt)))")

run_shardserve() {  # model round
  local out
  out=$("$bin" generate --model "$1" --prompt-ids "$ids" --max-tokens "$gen" --temperature 0 \
        --ignore-eos --threads "$threads" --json 2>"$work/err") ||
    { echo "error: shardserve generate failed on $1:" >&2; cat "$work/err" >&2; exit 1; }
  python3 - "$out" "$1" "$2" >>"$runs" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print(json.dumps({"engine": "shardserve", "model": sys.argv[2], "round": int(sys.argv[3]),
                  "prefill": d["prefill_tokens_per_s"], "decode": d["decode_tokens_per_s"]}))
PY
}

run_llamacpp() {  # model round
  local pp tg
  pp=$("$llama_bench" -m "$1" -t "$threads" -p "$prompt" -n 0 -r 1 -o json 2>"$work/err") ||
    { echo "error: llama-bench failed on $1:" >&2; cat "$work/err" >&2; exit 1; }
  tg=$("$llama_bench" -m "$1" -t "$threads" -p 0 -n "$gen" -d "$prompt" -r 1 -o json 2>"$work/err") ||
    { echo "error: llama-bench failed on $1:" >&2; cat "$work/err" >&2; exit 1; }
  python3 - "$pp" "$tg" "$1" "$2" >>"$runs" <<'PY'
import json, sys
pp, tg = json.loads(sys.argv[1])[0], json.loads(sys.argv[2])[0]
print(json.dumps({"engine": "llama.cpp", "model": sys.argv[3], "round": int(sys.argv[4]),
                  "prefill": pp["avg_ts"], "decode": tg["avg_ts"],
                  "build": f'{pp.get("build_commit", "?")} ({pp.get("build_number", "?")})',
                  "cpu_info": pp.get("cpu_info", "")}))
PY
}

for ((r = 1; r <= rounds; ++r)); do
  bws+=("$(bandwidth)")
  echo "round $r/$rounds: read bandwidth ($threads threads) ${bws[-1]} GB/s" >&2
  for f in "${models[@]}"; do
    echo "round $r/$rounds: $(basename "$f")" >&2
    # Alternate which engine goes first, so neither always runs on a cooler or warmer machine.
    if (( r % 2 == 1 )); then run_shardserve "$f" "$r"; run_llamacpp "$f" "$r"
    else run_llamacpp "$f" "$r"; run_shardserve "$f" "$r"; fi
  done
done

python3 - "$runs" "$(IFS=,; echo "${bws[*]}")" "$cpu" "$threads" "$prompt" "$gen" "$rounds" \
    "${json_out:-}" "${models[@]}" <<'PY'
import json, os, statistics, struct, sys
runs_path, bws, cpu, threads, prompt, gen, rounds, json_out = sys.argv[1:9]
models = sys.argv[9:]
bws = [float(b) for b in bws.split(",")]
bw = statistics.median(bws)
runs = [json.loads(l) for l in open(runs_path)]

TYPES = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
         8: (32, 34), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
         14: (256, 210), 15: (256, 292), 20: (32, 18), 23: (256, 136)}
NAMES = {0: "F32", 1: "F16", 30: "BF16", 2: "Q4_0", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 12: "Q4_K",
         13: "Q5_K", 14: "Q6_K", 20: "IQ4_NL", 23: "IQ4_XS",
         11: "Q3_K", 10: "Q2_K"}

def tensors(path):
    """(name, ggml type, bytes) of each tensor, from the GGUF header."""
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]
        def rstr():
            return f.read(rd("Q")).decode("utf-8", "replace")
        size = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        def skip(t):
            if t == 8: rstr()
            elif t == 9:
                et, n = rd("I"), rd("Q")
                for _ in range(n): skip(et)
            else: f.read(size[t])
        assert f.read(4) == b"GGUF"
        rd("I"); nt, nkv = rd("Q"), rd("Q")
        for _ in range(nkv):
            rstr(); skip(rd("I"))
        out = []
        for _ in range(nt):
            name = rstr(); dims = [rd("q") for _ in range(rd("I"))]; t = rd("I"); rd("Q")
            n = 1
            for d in dims: n *= d
            if t not in TYPES:
                sys.exit(f"error: {path}: tensor {name} has GGML type {t}, which this report "
                         "cannot size (add it to TYPES)")
            be, bb = TYPES[t]
            out.append((name, t, n // be * bb))
        return out

def med(xs):
    return statistics.median(xs) if xs else float("nan")

rows = []
for m in models:
    ts = tensors(m)
    has_output = any(n == "output.weight" for n, _, _ in ts)
    # Bytes read per decoded token: every matrix but the embedding (a row lookup), and the
    # embedding again when it doubles as the LM head.
    per_token = sum(b for n, _, b in ts if n != "token_embd.weight" or not has_output)
    mix = {}
    for n, t, b in ts:
        if n.endswith(".weight") and "norm" not in n:
            mix[NAMES.get(t, str(t))] = mix.get(NAMES.get(t, str(t)), 0) + b
    types = "+".join(k for k, _ in sorted(mix.items(), key=lambda kv: -kv[1]))
    s = [r for r in runs if r["model"] == m and r["engine"] == "shardserve"]
    l = [r for r in runs if r["model"] == m and r["engine"] == "llama.cpp"]
    row = {"model": os.path.basename(m), "types": types, "bytes_per_token": per_token,
           "shardserve_prefill": med([r["prefill"] for r in s]),
           "llamacpp_prefill": med([r["prefill"] for r in l]),
           "shardserve_decode": med([r["decode"] for r in s]),
           "llamacpp_decode": med([r["decode"] for r in l])}
    row["roofline_decode"] = bw * 1e9 / per_token
    rows.append(row)

build = next((r.get("build") for r in runs if r["engine"] == "llama.cpp"), "?")
print(f"machine: {cpu}; {threads} threads; read bandwidth {bw:.2f} GB/s (median of the rounds' "
      f"{', '.join(f'{b:.1f}' for b in bws)}); prompt {prompt} tokens, {gen} generated; medians "
      f"of {rounds} interleaved rounds; llama.cpp build {build}")
print()
print("| model | tensor types (by bytes) | prefill tok/s: shardserve | llama.cpp | ratio "
      "| decode tok/s: shardserve | llama.cpp | ratio | roofline decode tok/s "
      "| shardserve / roofline | llama.cpp / roofline |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    print(f"| {r['model']} | {r['types']} | {r['shardserve_prefill']:.1f} | {r['llamacpp_prefill']:.1f} "
          f"| {r['shardserve_prefill'] / r['llamacpp_prefill']:.2f} | {r['shardserve_decode']:.2f} "
          f"| {r['llamacpp_decode']:.2f} | {r['shardserve_decode'] / r['llamacpp_decode']:.2f} "
          f"| {r['roofline_decode']:.1f} | {r['shardserve_decode'] / r['roofline_decode']:.0%} "
          f"| {r['llamacpp_decode'] / r['roofline_decode']:.0%} |")
if json_out:
    json.dump({"cpu": cpu, "threads": int(threads), "read_gb_per_s": bw,
               "read_gb_per_s_rounds": bws, "rows": rows,
               "runs": runs}, open(json_out, "w"), indent=1)
PY
