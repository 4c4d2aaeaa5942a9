#!/usr/bin/env bash
# Clang's thread-safety analysis over every C++ source of the project (not tests): each file is
# compiled with -fsyntax-only -Wthread-safety -Werror=thread-safety, using the flags of the
# build's compile_commands.json (scripts/build.sh writes it). Fails listing each warning, so an
# ABSL_GUARDED_BY member read without its mutex, or a REQUIRES contract broken, stops CI.
#   scripts/thread-safety.sh [BUILD_DIR]     (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-${SHARDSERVE_BUILD_DIR:-build}}
[ -f "$build/compile_commands.json" ] || { echo "error: $build/compile_commands.json missing (run scripts/build.sh)" >&2; exit 2; }
command -v clang++ >/dev/null || scripts/install-deps.sh
python3 - "$build" <<'PY'
import json, os, shlex, subprocess, sys
from concurrent.futures import ThreadPoolExecutor

build = sys.argv[1]
root = os.getcwd()
folders = ("common/", "kernels/", "model/", "worker/", "router/", "cli/")
jobs = []
for e in json.load(open(os.path.join(build, "compile_commands.json"))):
    rel = os.path.relpath(e["file"], root)
    if not rel.startswith(folders) or not rel.endswith(".cc"):
        continue
    args = shlex.split(e["command"])
    # Drop the compiler, the output and GCC-only warning flags; keep includes, defines, -std, -m.
    out, skip = [], False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MT", "-MQ"):
            skip = True
            continue
        if a in ("-c", "-MD", "-MMD") or a.startswith("-W") or a.startswith("-O") or a == "-g":
            continue
        out.append(a)
    jobs.append((rel, ["clang++", "-fsyntax-only", "-Wno-everything", "-Wthread-safety",
                       "-Werror=thread-safety"] + out, e["directory"]))

def run(job):
    rel, cmd, cwd = job
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return rel, p.returncode, p.stderr

failed = 0
with ThreadPoolExecutor(max_workers=int(os.environ.get("JOBS", "2"))) as pool:
    for rel, rc, err in pool.map(run, jobs):
        if rc != 0:
            failed += 1
            sys.stderr.write(err)
print(f"thread-safety: {len(jobs)} files analysed, {failed} with findings")
sys.exit(1 if failed else 0)
PY
