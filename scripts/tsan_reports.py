#!/usr/bin/env python3
"""Sorts ThreadSanitizer report files (scripts/tsan.sh) into races in shardserve's own code and
races between accesses made inside uninstrumented libraries (Debian's gRPC, Protobuf and Abseil
are not built with TSan, so the synchronisation they do internally is invisible and their own
accesses cannot be judged). A report counts as ours when, on both sides of the race, the code
making the access (the first frame that is not an interceptor such as memcpy) is a source file of
this repository. Prints ours in full and a count of the others; exits 1 when any is ours.

  scripts/tsan_reports.py LOG_DIR REPO_ROOT
"""
import glob
import os
import re
import sys

FRAME = re.compile(r"^\s*#(\d+) (.*)$")


def accessor(stack_lines, root):
    """The file of the first frame that is not an interceptor, or the library it is in."""
    for line in stack_lines:
        m = FRAME.match(line)
        if not m:
            continue
        text = m.group(2)
        if " <null> <null> " in text or text.split(" ")[0] in (
                "memcpy", "memmove", "memset", "memcmp", "strlen", "operator", "free", "malloc"):
            if "(lib" in text:
                return "lib"
            continue
        loc = re.search(r" (/\S+?):\d+", text)
        if loc:
            path = os.path.normpath(loc.group(1))
            if path.startswith(("/usr/include/", "/usr/lib/gcc/")):
                continue  # a template inlined from a header: look at its caller
            rel = os.path.relpath(path, root)
            ours = not rel.startswith("..") and not rel.split(os.sep)[0].startswith("build")
            return "ours" if ours else "lib"
        if "(lib" in text:
            return "lib"
    return "lib"


def sides(report):
    """The two stacks of a race report: the access and the previous access."""
    out, cur = [], None
    for line in report.splitlines():
        if re.match(r"\s+(Read|Write|Atomic \w+) of size", line) or re.match(r"\s+Previous ", line):
            cur = []
            out.append(cur)
        elif cur is not None:
            if not line.strip():
                cur = None
            else:
                cur.append(line)
    return out[:2]


def main():
    logs, root = sys.argv[1], os.path.normpath(sys.argv[2])
    ours, others = [], 0
    for f in sorted(glob.glob(os.path.join(logs, "tsan*"))):
        for report in open(f, errors="replace").read().split("==================")[1:]:
            if "WARNING: ThreadSanitizer" not in report:
                continue
            stacks = sides(report)
            if len(stacks) == 2 and all(accessor(s, root) == "ours" for s in stacks):
                ours.append((f, report))
            else:
                others += 1
    for f, report in ours:
        print(f"== {f}{report}")
    print(f"tsan reports: {len(ours)} in shardserve's code, {others} between accesses inside "
          "uninstrumented libraries (not judged)")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main())
