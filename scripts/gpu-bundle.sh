#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh runs into one compressed archive for a machine with an NVIDIA
# GPU, its driver, CUDA 13 and NCCL, but no gRPC, Protobuf or Abseil (and no compiler, apt or
# network): the stripped binaries and test programs, and the shared libraries they load that
# such a machine lacks. Fails when the archive is over 60 MiB.
#
#   scripts/gpu-bundle.sh [BUILD_DIR] [ARCHIVE]   (default: build, BUILD_DIR/gpu-bundle.tar.xz)
#
# There, from the repository root (with ../shared beside it):
#   mkdir -p build-gpu && tar -xJf gpu-bundle.tar.xz -C build-gpu && scripts/gpu-check.sh build-gpu
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-${SHARDSERVE_BUILD_DIR:-build}}
archive=${2:-$build/gpu-bundle.tar.xz}
limit_bytes=$((60 * 1024 * 1024))
programs=(bin/shardserve bin/shardserve-worker bin/shardserve-router tests/cuda_backend_test
          tests/cuda_model_test tests/nccl_link_test tests/cuda_decode_bench)
for p in "${programs[@]}"; do
  [ -x "$build/$p" ] || { echo "gpu-bundle: $build/$p is not built (a CUDA build is needed)" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/tests" "$stage/lib"
for p in "${programs[@]}"; do
  strip --strip-all -o "$stage/$p" "$build/$p"
done
# Libraries the GPU machine has: the C runtime and loader, and the CUDA driver, runtime, cuBLAS
# and NCCL (same major versions as this build's toolkit).
have='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libcuda\.|libcudart\.|libcublas\.|libcublasLt\.|libnccl\.)'
declare -A copied=()
for p in "${programs[@]}"; do
  while read -r name path; do
    [[ "$name" =~ $have ]] && continue
    [ -n "$path" ] && [ -f "$path" ] || continue
    [ -n "${copied[$name]:-}" ] && continue
    copied[$name]=1
    cp -L "$path" "$stage/lib/$name"
    strip --strip-unneeded "$stage/lib/$name" 2>/dev/null || true
  done < <(ldd "$build/$p" | awk '$2 == "=>" {print $1, $3}')
done
mkdir -p "$(dirname "$archive")"
tar -C "$stage" -cf - bin tests lib | xz -T2 -6 >"$archive"
unpacked=$(du -sb "$stage" | cut -f1)
size=$(stat -c %s "$archive")
echo "gpu-bundle: $archive: $((size / 1024 / 1024)) MiB ($size bytes; $((unpacked / 1024 / 1024)) MiB unpacked," \
     "${#programs[@]} programs, ${#copied[@]} libraries: ${!copied[*]})"
if [ "$size" -gt "$limit_bytes" ]; then
  echo "gpu-bundle: over the 60 MiB limit" >&2
  exit 1
fi
