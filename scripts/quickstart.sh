#!/usr/bin/env bash
# The main job on a fresh machine: installs the packages, builds, then starts a local cluster
# (a router and two pipeline-stage workers) on the bundled stories260K model and streams a story
# through it over gRPC. Extra arguments go to `shardserve up`.
#
#   scripts/quickstart.sh [--prompt "Once upon a time"] [--workers 2] [--max-tokens 256]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
args=("$@")
has_prompt=0
for a in "${args[@]}"; do [ "$a" = "--prompt" ] && has_prompt=1; done
if [ $has_prompt -eq 0 ]; then
  args+=(--prompt "Once upon a time" --max-tokens 256)
fi
exec build/bin/shardserve up --workers 2 "${args[@]}"
