#!/bin/sh
# Copies the shared libraries the given binaries load (ldd's view) into DEST, leaving out the C
# library family, which the runtime image's own Debian 12 provides, and libcuda, which the NVIDIA
# container runtime mounts from the host driver.
#
#   collect-runtime-libs.sh DEST BINARY...
set -eu
dest=$1
shift
mkdir -p "$dest"
ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | ld-linux*.so.* | libcuda.so.*)
      continue ;;
  esac
  cp -L "$lib" "$dest/"
done
