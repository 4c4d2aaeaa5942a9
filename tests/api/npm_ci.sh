#!/usr/bin/env bash
# Installs the locked npm packages of SRC (a folder with package.json and package-lock.json;
# default clients/node) into DIR (default build/api-node), once per lockfile: `npm ci` needs the
# npm registry the first time, nothing afterwards. Callers that may run side by side hold a lock
# on DIR.lock (tests/api/api_testing.cc).
#   tests/api/npm_ci.sh [DIR] [SRC]
set -euo pipefail
src="$(cd "${2:-$(dirname "$0")/../../clients/node}" && pwd)"
dir="${1:-build/api-node}"
mkdir -p "$dir"
if [ -d "$dir/node_modules" ] && cmp -s "$src/package-lock.json" "$dir/package-lock.json"; then
  exit 0
fi
cp "$src/package.json" "$src/package-lock.json" "$dir/"
cd "$dir"
# A failed install leaves no lockfile behind, so that the next run does not take it as done.
npm ci --no-audit --no-fund --loglevel=error >/dev/null || { rm -f package-lock.json; exit 1; }
