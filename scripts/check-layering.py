#!/usr/bin/env python3
"""Checks that dependencies point one way: common <- kernels <- model <- worker|router <- cli.

Every `#include "X/..."` in a source folder must name a folder its layer may use (ALLOWED,
written down once here), and every folder's CMakeLists.txt builds only its own sources. Exits 1
listing each offending line; CI runs it from scripts/test.sh.

  scripts/check-layering.py [ROOT]     (ROOT: the repository, default: this script's parent)
  scripts/check-layering.py --self-test  checks that a wrong include and a foreign source fail
"""
import pathlib
import re
import sys
import tempfile

# The folders each layer may include from. "proto" is the generated gRPC/protobuf code
# (#include "shardserve/v1/..." or "kserve/v2/..."). Router and worker share what they must
# (wire limits, metrics, cluster credentials) through common/, never each other's headers.
ALLOWED = {
    "common": {"common"},
    "kernels": {"common", "kernels"},
    "model": {"common", "kernels", "model"},
    "worker": {"common", "kernels", "model", "proto", "worker"},
    "router": {"common", "model", "proto", "router"},
    "cli": {"common", "kernels", "model", "proto", "worker", "router", "cli"},
}
# Headers a layer may not include although their folder is allowed: the model reaches kernels
# only through their interface (kernels/*.h: Backend, the sampling contract, block formats),
# never one backend's internals.
FORBIDDEN_PREFIXES = {
    "model": ("kernels/cpu/", "kernels/cuda/"),
    "router": ("kernels/",),
}
PROTO_PREFIXES = {"shardserve", "kserve"}
SOURCE_SUFFIXES = {".cc", ".h", ".cu", ".cuh"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"(([^"/]+)/[^"]*)"')
FOREIGN_SOURCE = re.compile(r"\$\{(?:PROJECT_SOURCE_DIR|CMAKE_SOURCE_DIR)\}/([A-Za-z_]+)/|"
                            r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/\.\./")


def check(root: pathlib.Path) -> list:
    problems = []
    for layer, allowed in ALLOWED.items():
        folder = root / layer
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix in SOURCE_SUFFIXES:
                for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    header, target = m.group(1), m.group(2)
                    target = "proto" if target in PROTO_PREFIXES else target
                    if target in ALLOWED and target not in allowed:
                        problems.append(
                            f"{path.relative_to(root)}:{n}: {layer}/ includes {target}/ "
                            f"(allowed: {', '.join(sorted(allowed))}): {line.strip()}")
                    elif header.startswith(FORBIDDEN_PREFIXES.get(layer, ())):
                        problems.append(
                            f"{path.relative_to(root)}:{n}: {layer}/ includes a backend's "
                            f"internals (use the kernels/*.h interfaces): {line.strip()}")
            elif path.name == "CMakeLists.txt" or path.suffix == ".cmake":
                for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    m = FOREIGN_SOURCE.search(line)
                    if m and (m.group(1) is None or m.group(1) != layer):
                        problems.append(f"{path.relative_to(root)}:{n}: {layer}/ builds or "
                                        f"includes files of another folder: {line.strip()}")
    return problems


def self_test(root: pathlib.Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        t = pathlib.Path(tmp)
        (t / "kernels").mkdir()
        (t / "kernels" / "k.h").write_text('#include "model/sampler.h"\n')
        (t / "router").mkdir()
        (t / "router" / "r.cc").write_text('#include "worker/grpc_link.h"\n'
                                           '#include "shardserve/v1/worker.pb.h"\n')
        (t / "model").mkdir()
        (t / "model" / "m.cc").write_text('#include "kernels/cpu/quant.h"\n'
                                          '#include "kernels/backend.h"\n')
        (t / "model" / "CMakeLists.txt").write_text("add_library(x ${PROJECT_SOURCE_DIR}/cli/a.cc)\n")
        (t / "worker").mkdir()
        (t / "worker" / "w.cc").write_text('#include "common/wire.h"\n#include "model/stage.h"\n')
        found = check(t)
    expected = ["kernels/k.h:1", "router/r.cc:1", "model/CMakeLists.txt:1", "model/m.cc:1"]
    ok = len(found) == len(expected) and all(
        any(p.startswith(e) for p in found) for e in expected)
    print("\n".join(found))
    print("check-layering self-test:", "ok" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    args = sys.argv[1:]
    root = pathlib.Path(__file__).resolve().parent.parent
    if args and args[0] == "--self-test":
        return self_test(root)
    if args:
        root = pathlib.Path(args[0]).resolve()
    problems = check(root)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"check-layering: {len(problems)} dependencies against the layering", file=sys.stderr)
        return 1
    print("check-layering: every include and build rule follows the layering")
    return 0


if __name__ == "__main__":
    sys.exit(main())
