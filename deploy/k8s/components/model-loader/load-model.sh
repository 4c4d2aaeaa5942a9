#!/bin/sh
# Copies a model folder onto the shardserve-models volume, once: the Job shardserve-model-loader
# runs it (docs/DEPLOY.md), and tests/deploy/model_loader_test.sh runs it against local folders.
#
#   MODEL         where the router and workers read the model (base/flags.env: /models/model)
#   MODEL_SOURCE  what to copy, as rclone names it: a path on a volume mounted in the Job
#                 (/source/Llama-3.1-8B-Instruct), a bucket path through an rclone connection
#                 string (:s3,env_auth:my-bucket/models/llama, :gcs,env_auth:bucket/path), or a
#                 remote configured with RCLONE_CONFIG_* variables from the Secret
#                 shardserve-model-store
#
# The copy lands in a folder beside MODEL and is renamed into place only when it is whole and
# holds config.json and weights, so no pod ever reads half a model. A Job retry resumes the copy
# (rclone skips files already there). A volume that already holds the model is left alone:
# delete the folder to load another one.
set -eu

fail() {
  echo "load-model: error: $*" >&2
  exit 2
}

[ -n "${MODEL:-}" ] || fail "MODEL is not set (the shardserve-flags ConfigMap sets it)"
[ -n "${MODEL_SOURCE:-}" ] ||
  fail "MODEL_SOURCE is not set: name the model to copy in the shardserve-model-source ConfigMap"
if [ -f "$MODEL/config.json" ]; then
  echo "load-model: $MODEL already holds a model ($MODEL/config.json); nothing to copy"
  exit 0
fi
[ ! -e "$MODEL" ] ||
  fail "$MODEL exists but holds no config.json; remove it, then run the loader again"

parent=$(dirname "$MODEL")
incoming="$parent/.incoming-$(basename "$MODEL")"
mkdir -p "$parent"
echo "load-model: copying $MODEL_SOURCE to $MODEL"
# sync, not copy: files a failed try left from another MODEL_SOURCE are removed, not mixed in.
rclone sync --stats 30s --stats-one-line --stats-log-level NOTICE --transfers 8 \
  "$MODEL_SOURCE" "$incoming"
[ -f "$incoming/config.json" ] ||
  fail "$MODEL_SOURCE holds no config.json: point MODEL_SOURCE at a Hugging Face model folder" \
    "(config.json, *.safetensors, tokenizer.json)"
ls "$incoming"/*.safetensors >/dev/null 2>&1 ||
  fail "$MODEL_SOURCE holds no *.safetensors weights"
# -T: should MODEL have appeared meanwhile (another loader), fail rather than nest inside it.
mv -T "$incoming" "$MODEL"
echo "load-model: $MODEL is ready ($(du -sh "$MODEL" | cut -f1))"
