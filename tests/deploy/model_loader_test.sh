#!/usr/bin/env bash
# The model-loader Job's script (deploy/k8s/components/model-loader/load-model.sh) against local
# folders, with Debian's rclone: it copies a model folder whole and renames it into place; a
# second run copies nothing; a source that is not a model folder, or no source at all, fails
# with an error naming the problem and leaves no model behind; a copy left half-done by a failed
# try is resumed, not trusted, and what another source's try left is not mixed in.
#
#   tests/deploy/model_loader_test.sh        (run by scripts/validate-deploy.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
loader=deploy/k8s/components/model-loader/load-model.sh
model_src=${SHARDSERVE_SHARED_DIR:-../shared}/models/stories260K
[ -f "$model_src/config.json" ] || { echo "model_loader_test: no model at $model_src" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
check() {  # check NAME CONDITION...
  local name=$1
  shift
  if "$@"; then echo "  ok: $name"; else echo "  FAILED: $name" >&2; failures=$((failures + 1)); fi
}
run() {  # run MODEL MODEL_SOURCE: output in $work/out, status in $status
  status=0
  env -u MODEL -u MODEL_SOURCE ${1:+MODEL="$1"} ${2:+MODEL_SOURCE="$2"} \
    sh "$loader" >"$work/out" 2>&1 || status=$?
}

# A fresh volume: the whole folder arrives, under its final name only.
run "$work/vol/model" "$model_src"
check "copies the model folder" [ "$status" -eq 0 ]
check "the copy equals the source" diff -r "$model_src" "$work/vol/model"
check "no staging folder is left" [ ! -e "$work/vol/.incoming-model" ]

# Again: the volume already holds it; nothing is copied.
touch -d '2000-01-01' "$work/vol/model/config.json"
run "$work/vol/model" "$model_src"
check "a second run succeeds" [ "$status" -eq 0 ]
check "a second run says there is nothing to copy" grep -q "nothing to copy" "$work/out"
check "a second run copies nothing" [ "$(stat -c %Y "$work/vol/model/config.json")" = "$(date -d '2000-01-01' +%s)" ]

# A source that is not a model folder.
mkdir -p "$work/not-a-model" && echo hi >"$work/not-a-model/README"
run "$work/vol2/model" "$work/not-a-model"
check "a folder without config.json fails" [ "$status" -ne 0 ]
check "the error names config.json" grep -q "holds no config.json" "$work/out"
check "no model is left behind" [ ! -e "$work/vol2/model" ]

# A source that does not exist: rclone's error, and still no model.
run "$work/vol3/model" "$work/no-such-folder"
check "a missing source fails" [ "$status" -ne 0 ]
check "no model is left behind (missing source)" [ ! -e "$work/vol3/model" ]

# No MODEL_SOURCE at all.
run "$work/vol4/model" ""
check "no MODEL_SOURCE fails with status 2" [ "$status" -eq 2 ]
check "the error names MODEL_SOURCE" grep -q "MODEL_SOURCE is not set" "$work/out"

# A try that died halfway left a partial staging folder: the next one completes it.
mkdir -p "$work/vol5/.incoming-model"
head -c 1000 "$model_src/model.safetensors" >"$work/vol5/.incoming-model/model.safetensors"
run "$work/vol5/model" "$model_src"
check "a half-done copy is completed" [ "$status" -eq 0 ]
check "the completed copy equals the source" diff -r "$model_src" "$work/vol5/model"

# A try with another MODEL_SOURCE left a file behind: it is not mixed into the model.
mkdir -p "$work/vol7/.incoming-model" && echo stray >"$work/vol7/.incoming-model/extra.safetensors"
run "$work/vol7/model" "$model_src"
check "a copy after another source's try succeeds" [ "$status" -eq 0 ]
check "files of the other source are not mixed in" diff -r "$model_src" "$work/vol7/model"

# A model folder that exists without config.json is not overwritten.
mkdir -p "$work/vol6/model" && echo keep >"$work/vol6/model/notes"
run "$work/vol6/model" "$model_src"
check "an unrelated folder at MODEL is refused" [ "$status" -eq 2 ]
check "the unrelated folder is untouched" [ "$(cat "$work/vol6/model/notes")" = keep ]

if [ "$failures" -ne 0 ]; then
  echo "model_loader_test: $failures checks failed" >&2
  exit 1
fi
echo "model_loader_test: all checks passed"
