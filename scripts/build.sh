#!/usr/bin/env bash
# Configures and builds shardserve into build/ (binaries in build/bin). Installs the Debian
# packages it needs first. Extra arguments go to cmake's configure step.
#
#   scripts/build.sh [-DCMAKE_BUILD_TYPE=Debug ...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${SHARDSERVE_BUILD_DIR:-build}
start=$(date +%s)
mkdir -p "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; echo "error: cmake configure failed (log above)" >&2; exit 1; }
ninja -C "$build"
echo "build: done in $(( $(date +%s) - start ))s; binaries in $build/bin"
