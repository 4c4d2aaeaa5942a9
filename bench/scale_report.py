#!/usr/bin/env python3
"""Tables and a plot from bench/scale.sh's results.jsonl.

    scale_report.py RESULTS.jsonl OUT_DIR
    scale_report.py --last RESULTS.jsonl     one line for the newest measurement

Prints one Markdown table per section and writes OUT_DIR/depth.svg: throughput against
concurrency for each pipeline depth (solid) with its analytic bound (dashed), log-log.
"""
import json
import math
import sys

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def table(rows, with_bound):
    head = "| configuration | concurrency | tokens/s | "
    head += "bound tokens/s | of bound | " if with_bound else ""
    head += "TTFT p50 ms | ITL p50 ms | stage busy (min-max) | pipeline efficiency | errors |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        b = r["bench"]
        busy = b.get("stage_busy_fraction")
        busy_s = f"{min(busy):.2f}-{max(busy):.2f}" if busy else "n/a"
        eff = b.get("pipeline_efficiency")
        line = f"| {r['label']} | {r['concurrency']} | {r['throughput']:.0f} | "
        if with_bound:
            line += f"{r['bound']:.0f} | {100 * r['of_bound']:.1f}% | "
        line += (f"{b['ttft_ms_p50']:.1f} | {b['itl_ms_p50']:.2f} | {busy_s} | "
                 f"{eff:.3f} | " if eff is not None else
                 f"{b['ttft_ms_p50']:.1f} | {b['itl_ms_p50']:.2f} | {busy_s} | n/a | ")
        line += f"{b['errors']} |"
        print(line)
    print()


def plot(rows, path):
    depths = sorted({r["stages"] for r in rows})
    if not rows:
        return
    xs = [r["concurrency"] for r in rows]
    ys = [v for r in rows for v in (r["throughput"], r["bound"]) if v > 0]
    x0, x1 = math.log2(min(xs)), math.log2(max(xs))
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    w, h, left, bottom, top, right = 720, 440, 70, 50, 30, 150
    pw, ph = w - left - right, h - top - bottom

    def px(c):
        return left + (math.log2(c) - x0) / max(1e-9, x1 - x0) * pw

    def py(v):
        return top + ph - (math.log10(v) - y0) / max(1e-9, y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">Llama-3-8B shape on sim-H200 stages: '
           'throughput (solid) and analytic bound (dashed)</text>']
    for e in range(y0, y1 + 1):
        y = py(10 ** e)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for c in sorted(set(xs)):
        x = px(c)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{c}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 10}" text-anchor="middle">concurrent streams'
               '</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" transform="rotate(-90 16 {top + ph / 2})" '
               'text-anchor="middle">output tokens/s</text>')
    for i, d in enumerate(depths):
        colour = COLOURS[i % len(COLOURS)]
        pts = sorted((r["concurrency"], r["throughput"], r["bound"]) for r in rows
                     if r["stages"] == d)
        for k, dash in ((1, ""), (2, ' stroke-dasharray="5,4"')):
            path_d = " ".join(f"{'M' if j == 0 else 'L'}{px(p[0]):.1f},{py(p[k]):.1f}"
                              for j, p in enumerate(pts) if p[k] > 0)
            out.append(f'<path d="{path_d}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for p in pts:
            out.append(f'<circle cx="{px(p[0]):.1f}" cy="{py(p[1]):.1f}" r="3" fill="{colour}"/>')
        y = top + 20 * i
        out.append(f'<line x1="{left + pw + 15}" y1="{y + 10}" x2="{left + pw + 40}" y2="{y + 10}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 45}" y="{y + 14}">{d} stage{"s" if d > 1 else ""}'
                   '</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def last_line(results):
    r = [json.loads(line) for line in open(results) if line.strip()][-1]
    b = r["bench"]
    eff = b.get("pipeline_efficiency")
    print(f"{r['section']:8s} {r['label']:24s} c={r['concurrency']:<4d} "
          f"{r['throughput']:8.0f} tok/s, bound {r['bound']:8.0f} ({100 * r['of_bound']:5.1f}%), "
          f"TTFT p50 {b['ttft_ms_p50']:7.1f} ms, ITL p50 {b['itl_ms_p50']:6.2f} ms, "
          f"errors {b['errors']}" + (f", efficiency {eff:.3f}" if eff is not None else ""))


def main():
    if sys.argv[1] == "--last":
        last_line(sys.argv[2])
        return
    results, out_dir = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(results) if line.strip()]
    for section in ("depth", "distance", "large", "ceiling"):
        sel = [r for r in rows if r["section"] == section]
        if not sel:
            continue
        print(f"### {section}\n")
        table(sel, with_bound=section != "ceiling")
    depth = [r for r in rows if r["section"] == "depth"]
    if depth:
        plot(depth, f"{out_dir}/depth.svg")
        print(f"plot: {out_dir}/depth.svg")


if __name__ == "__main__":
    main()
