#!/usr/bin/env bash
# Generates Python gRPC stubs into OUT (default ./gen): shardserve.v1, grpc.health.v1 and the
# v1alpha reflection API. Needs protoc and grpc_python_plugin (Debian: protobuf-compiler,
# protobuf-compiler-grpc) and python3-grpcio / python3-protobuf to run them.
#
# health.proto and reflection.proto are compiled from their own folders, so their modules are
# top-level (health_pb2, reflection_pb2) and do not shadow the installed `grpc` package.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$here/../../proto"
out="${1:-$here/gen}"
grpc_proto="${GRPC_PROTO_DIR:-/usr/share/grpc-proto}"
plugin="$(command -v grpc_python_plugin)"
mkdir -p "$out"
gen() {
  protoc --python_out="$out" --grpc_out="$out" --plugin=protoc-gen-grpc="$plugin" "$@"
}
gen -I "$proto" shardserve/v1/inference.proto
if [ -f "$proto/kserve/v2/grpc_predict_v2.proto" ]; then
  gen -I "$proto" kserve/v2/grpc_predict_v2.proto
fi
gen -I "$grpc_proto/grpc/health/v1" health.proto
gen -I "$grpc_proto/grpc/reflection/v1alpha" reflection.proto
# Package markers so that `shardserve.v1.inference_pb2` imports.
touch "$out/shardserve/__init__.py" "$out/shardserve/v1/__init__.py"
if [ -d "$out/kserve" ]; then touch "$out/kserve/__init__.py" "$out/kserve/v2/__init__.py"; fi
