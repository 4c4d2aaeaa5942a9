#!/usr/bin/env bash
# Validates deploy/ offline: yamllint on the manifests, `kubectl kustomize` on every overlay, a
# typed schema check of every rendered object (kubernetes-types + tsc --noEmit, installed with
# npm from tests/deploy/package-lock.json into the build folder), and tests/deploy/check_manifests.py
# (flags, probe ports and drain timing against the built binaries' --help; the cluster-secret
# mount behind every --cluster-secret-file; NetworkPolicies that admit only router and worker pods
# to the workers' gRPC port; the API key Secret; the model-loader Job and the pods' wait for the
# model; TLS on the Ingress), with its self-test that each check catches a broken manifest; and
# tests/deploy/model_loader_test.sh (the loader's script against local folders).
#
#   scripts/validate-deploy.sh        after scripts/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SHARDSERVE_BUILD_DIR:-build}
work="$build/deploy-check"
mkdir -p "$work"

echo "== yamllint deploy/k8s"
yamllint --strict -c tests/deploy/yamllint.yaml deploy/k8s

echo "== kubectl kustomize"
rm -rf "$work/rendered" && mkdir -p "$work/rendered"
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$work/rendered/$name.yaml"
  echo "$name: $(grep -c '^kind:' "$work/rendered/$name.yaml") objects"
done
yamllint -d '{extends: default, rules: {document-start: disable, line-length: disable, indentation: {indent-sequences: whatever}}}' \
  "$work/rendered"

echo "== typed schema check (kubernetes-types, tsc --noEmit)"
npm_dir="$work/npm"
mkdir -p "$npm_dir"
if ! cmp -s tests/deploy/package-lock.json "$npm_dir/package-lock.json" ||
  [ ! -x "$npm_dir/node_modules/.bin/tsc" ]; then
  cp tests/deploy/package.json tests/deploy/package-lock.json "$npm_dir/"
  (cd "$npm_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
rm -rf "$npm_dir/typed" && mkdir -p "$npm_dir/typed"
cp tests/deploy/leaderworkerset.d.ts "$npm_dir/typed/"
cat >"$npm_dir/tsconfig.json" <<'JSON'
{
  "compilerOptions": {"strict": true, "noEmit": true, "target": "es2020", "module": "commonjs",
                      "moduleResolution": "node", "types": []},
  "include": ["typed/*.ts"]
}
JSON

echo "== the model-loader Job's script (rclone, local folders)"
tests/deploy/model_loader_test.sh

echo "== manifests against the binaries"
python3 tests/deploy/check_manifests.py --build "$build" --typescript "$npm_dir/typed" --self-test
"$npm_dir/node_modules/.bin/tsc" -p "$npm_dir/tsconfig.json"
# The typed check must reject a misspelt field.
printf '%s\n' 'import { Deployment } from "kubernetes-types/apps/v1";' \
  'export const bad: Deployment = {apiVersion: "apps/v1", kind: "Deployment", spec: {replica: 2}};' \
  >"$npm_dir/typed/known-bad.ts"
if "$npm_dir/node_modules/.bin/tsc" -p "$npm_dir/tsconfig.json" >/dev/null 2>&1; then
  echo "validate-deploy: tsc accepted a misspelt field; the typed check is not working" >&2
  exit 1
fi
rm "$npm_dir/typed/known-bad.ts"
echo "validate-deploy: all overlays valid"
