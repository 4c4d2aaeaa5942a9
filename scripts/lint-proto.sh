#!/usr/bin/env bash
# Lints the .proto files with buf's default rules (buf runs offline once fetched).
set -euo pipefail
cd "$(dirname "$0")/../proto"
exec npx --yes @bufbuild/buf@1.34.0 lint
