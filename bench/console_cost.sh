#!/usr/bin/env bash
# Console and status cost: the router's CPU while idle (its cluster monitor polling the workers
# once a second, as it always does) against the same while a client reads /v1/cluster?history=1
# and /console once a second -- what an open /console tab costs. A 2-replica x 2-stage cluster
# on stories260K; phases of --phase-s seconds alternate, --rounds of each; the router's CPU
# (utime + stime from /proc) over each phase. Prints the per-phase figures and the medians.
#
#   bench/console_cost.sh [--build DIR] [--model DIR] [--phase-s 20] [--rounds 3] [--port 50460]
set -euo pipefail

build=build
model=../shared/models/stories260K
phase_s=20
rounds=3
port=50460
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --phase-s) phase_s=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    *) echo "error: unknown flag $1; see the header of $0" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_setup "$build" "$model" shardserve-console-cost
workers=()
for i in 0 1 2 3; do
  bench_start "$bin/shardserve-worker" --listen "127.0.0.1:$((port + 1 + i))" --threads 1 \
    --model-root "$(cd "$(dirname "$model")" && pwd)" 2>"$logs/worker$i.log"
  workers+=("127.0.0.1:$((port + 1 + i))")
done
http=$((port + 10))
bench_start "$bin/shardserve-router" --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http" \
  --model "$model" --workers "$(IFS=,; echo "${workers[*]}")" --stages 2 --replicas 2 \
  2>"$logs/router.log"
router_pid=${bench_pids[-1]}
bench_wait_router "127.0.0.1:$port"

cpu_seconds() {  # utime + stime of the router, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$router_pid/stat"
}
phase() {  # phase NAME: the router's CPU percent over phase_s seconds
  local start end t0 t1
  start=$(cpu_seconds)
  t0=$(date +%s.%N)
  if [ "$1" = console ]; then
    curl -s -o /dev/null "http://127.0.0.1:$http/console"
    local until_s
    until_s=$(echo "$t0 + $phase_s" | bc)
    while [ "$(echo "$(date +%s.%N) < $until_s" | bc)" = 1 ]; do
      curl -s -o /dev/null "http://127.0.0.1:$http/v1/cluster?history=1"
      sleep 1
    done
  else
    sleep "$phase_s"
  fi
  end=$(cpu_seconds)
  t1=$(date +%s.%N)
  echo "scale=3; 100 * ($end - $start) / ($t1 - $t0)" | bc
}
idle=()
console=()
for r in $(seq "$rounds"); do
  idle+=("$(phase idle)")
  console+=("$(phase console)")
  echo "round $r: idle ${idle[-1]}% CPU, console open ${console[-1]}% CPU"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "router CPU, median of $rounds x ${phase_s} s: idle $(median "${idle[@]}")%," \
  "console open (1 refresh/s) $(median "${console[@]}")%; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
