#!/usr/bin/env bash
# Installs clients/node's locked npm packages into DIR (default build/api-node), once per
# lockfile: `npm ci` needs the npm registry the first time, nothing afterwards.
set -euo pipefail
src="$(cd "$(dirname "$0")/../../clients/node" && pwd)"
dir="${1:-build/api-node}"
mkdir -p "$dir"
if [ -d "$dir/node_modules" ] && cmp -s "$src/package-lock.json" "$dir/package-lock.json"; then
  exit 0
fi
cp "$src/package.json" "$src/package-lock.json" "$dir/"
cd "$dir"
npm ci --no-audit --no-fund --loglevel=error >/dev/null
