#!/usr/bin/env python3
"""One benchmark run on one machine: per-model batch-1 latency by backend
(native, tract, onnxruntime 1 thread) and GFLOP/s per MobileNetV2 conv layer
against the CPU's FP32 peak. Writes report.txt, report.json, latency.svg and
conv_gflops.svg into --out (default target/bench).

    python3 host/models/benches/report.py [--bench "target/release/edgeplug bench"] [--runs 100]

Uses only the standard library. The onnxruntime column comes from
compare_ort.sh (which installs onnxruntime from PyPI into a venv), run by this
script in the same invocation unless --no-ort is given.
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MODELS = [
    ("digits_cnn", "digits_test"),
    ("mobilenetv2", "mobilenetv2_input"),
    ("efficientnet_lite0", "efficientnet_lite0_input"),
    ("sunspots_lstm", "sunspots_test_windows"),
]
BACKENDS = ["native", "tract", "plugin", "onnxruntime"]
COLORS = {"native": "#1b9e77", "tract": "#d95f02", "plugin": "#7570b3", "onnxruntime": "#666666"}


def bench(cmd, model, backend, runs, npy, profile=False):
    argv = shlex.split(cmd) + [model, "--backend", backend, "--runs", str(runs), "--json"]
    if npy:
        argv += ["--input", npy]
    if profile:
        argv.append("--profile")
    p = subprocess.run(argv, capture_output=True, text=True)
    line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    if not line:
        return {"error": p.stderr.strip() or f"exit {p.returncode}"}
    return json.loads(line)


def svg_latency(rows, path):
    """Horizontal bars, log-scale ms, one group per model."""
    w, left, bar, gap = 760, 170, 14, 14
    vals = [r[b]["median_ms"] for r in rows for b in BACKENDS if r.get(b, {}).get("median_ms")]
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    scale = (w - left - 80) / max(hi - lo, 1)
    x = lambda v: left + (math.log10(v) - lo) * scale
    y, out = 40, []
    for r in rows:
        out.append(f'<text x="8" y="{y + 2 * bar}" font-size="13" font-weight="bold">{r["model"]}</text>')
        for b in BACKENDS:
            v = r.get(b, {}).get("median_ms")
            if v:
                out.append(f'<rect x="{left}" y="{y}" width="{x(v) - left:.1f}" height="{bar - 2}" fill="{COLORS[b]}"/>')
                out.append(f'<text x="{x(v) + 4:.1f}" y="{y + bar - 4}" font-size="11">{b} {v:.3f} ms</text>')
            y += bar
        y += gap
    ticks = "".join(
        f'<line x1="{x(10 ** e):.1f}" y1="30" x2="{x(10 ** e):.1f}" y2="{y}" stroke="#ddd"/>'
        f'<text x="{x(10 ** e):.1f}" y="{y + 14}" font-size="11" text-anchor="middle">{10 ** e:g} ms</text>'
        for e in range(lo, hi + 1)
    )
    title = '<text x="8" y="18" font-size="14">Batch-1 median latency by backend (log scale, lower is better)</text>'
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{y + 30}" font-family="sans-serif">'
                f'<rect width="100%" height="100%" fill="white"/>{title}{ticks}{"".join(out)}</svg>\n')


def svg_layers(layers, peak, path):
    w, left, bar = 900, 330, 12
    top = max(peak, max(l["gflops"] for l in layers)) * 1.05
    x = lambda v: left + v / top * (w - left - 60)
    out, y = [], 40
    for l in layers:
        color = "#1b9e77" if l["kind"] == "pointwise" else "#d95f02" if l["kind"] == "depthwise" else "#7570b3"
        out.append(f'<text x="{left - 6}" y="{y + bar - 3}" font-size="10" text-anchor="end">{l["step"]}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{x(l["gflops"]) - left:.1f}" height="{bar - 2}" fill="{color}"/>')
        out.append(f'<text x="{x(l["gflops"]) + 3:.1f}" y="{y + bar - 3}" font-size="9">{l["gflops"]:.1f}</text>')
        y += bar
    peak_line = (f'<line x1="{x(peak):.1f}" y1="30" x2="{x(peak):.1f}" y2="{y}" stroke="red" stroke-dasharray="4"/>'
                 f'<text x="{x(peak):.1f}" y="{y + 14}" font-size="11" fill="red" text-anchor="middle">FP32 peak {peak:g} GFLOP/s</text>')
    title = ('<text x="8" y="18" font-size="14">MobileNetV2 conv layers on the native backend: GFLOP/s '
             '(green pointwise, orange depthwise, purple dense)</text>')
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{y + 30}" font-family="sans-serif">'
                f'<rect width="100%" height="100%" fill="white"/>{title}{peak_line}{"".join(out)}</svg>\n')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(ROOT, "target/release/edgeplug") + " bench")
    ap.add_argument("--models", default=os.path.join(ROOT, "tests/fixtures/models"))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench"))
    ap.add_argument("--peak", type=float, help="FP32 GFLOP/s of one core (default: measured by `bench --peak` in this run)")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--plugin-json", help="JSON list of {model, median_ms} measured through a plugin")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.peak is None:
        p = subprocess.run(shlex.split(a.bench) + ["--peak", "--json"], capture_output=True, text=True, check=True)
        a.peak = round(json.loads(p.stdout.strip().splitlines()[-1])["peak_gflops"], 1)
        print(f"measured FP32 peak of one core: {a.peak} GFLOP/s", file=sys.stderr)

    ort = {}
    if not a.no_ort:
        ort_json = os.path.join(a.out, "ort.json")
        env = dict(os.environ, OUT=ort_json, RUNS=str(a.runs))
        subprocess.run([os.path.join(ROOT, "host/models/benches/compare_ort.sh"), a.models], check=True, env=env)
        ort = {r["model"]: r for r in json.load(open(ort_json))}
    plugin = {r["model"]: r for r in json.load(open(a.plugin_json))} if a.plugin_json else {}

    rows = []
    for name, npy in MODELS:
        model = os.path.join(a.models, name + ".onnx")
        if not os.path.exists(model):
            continue
        npy = os.path.join(a.models, npy + ".npy")
        npy = npy if os.path.exists(npy) else None
        row = {"model": name}
        for b in ("native", "tract"):
            row[b] = bench(a.bench, model, b, a.runs, npy)
            print(f"{name:<20} {b:<8} {row[b].get('median_ms', row[b].get('error'))}", file=sys.stderr)
        if name in plugin:
            row["plugin"] = plugin[name]
        if name in ort:
            row["onnxruntime"] = ort[name]
        rows.append(row)

    prof = bench(a.bench, os.path.join(a.models, "mobilenetv2.onnx"), "native", a.runs,
                 os.path.join(a.models, "mobilenetv2_input.npy"), profile=True)
    layers = []
    for l in prof.get("layers", []):
        if l["flops"] and (l["step"].startswith("conv") or l["step"].startswith("dw")):
            kind = "depthwise" if l["step"].startswith("dw") else "pointwise" if l["step"].startswith("conv1x1") else "dense"
            g = l["flops"] / (l["median_ms"] * 1e6)
            layers.append({**l, "kind": kind, "gflops": g, "pct_peak": 100 * g / a.peak})

    def ms(r, b):
        v = r.get(b, {}).get("median_ms")
        return f"{v:9.3f}" if v else "        -"

    def ratio(r, num, den):
        n, d = r.get(num, {}).get("median_ms"), r.get(den, {}).get("median_ms")
        if num == "plugin" and r.get("plugin", {}).get("native_direct_ms"):
            # The plugin measurement times the direct run too, interleaved in its own
            # process: compare within that run, not across processes.
            d = r["plugin"]["native_direct_ms"]
        return f"{n / d:6.2f}x" if n and d else "      -"

    lines = ["model                  native ms  tract ms  plugin ms   ORT ms  native/ORT tract/ORT plugin/native"]
    for r in rows:
        lines.append(f"{r['model']:<20} {ms(r, 'native')} {ms(r, 'tract')} {ms(r, 'plugin')} {ms(r, 'onnxruntime')}"
                     f"   {ratio(r, 'native', 'onnxruntime')}  {ratio(r, 'tract', 'onnxruntime')}  {ratio(r, 'plugin', 'native')}")
        for b in ("native", "tract"):
            if "error" in r.get(b, {}):
                lines.append(f"    {b}: {r[b]['error']}")
    if plugin:
        lines.append("plugin/native: against the direct runs interleaved with the plugin's (--plugin-json)")
    lines += ["", f"MobileNetV2 conv layers on the native backend (FP32 peak {a.peak:g} GFLOP/s per core, measured in this run):",
              "   ms      GFLOP/s  % peak  layer"]
    for l in layers:
        lines.append(f"{l['median_ms']:7.3f} {l['gflops']:9.1f} {l['pct_peak']:6.1f}%  {l['step']}")
    tot = sum(l["flops"] for l in layers)
    tms = sum(l["median_ms"] for l in layers)
    if layers:
        lines.append(f"total conv: {tot / 1e6:.0f} MFLOP in {tms:.2f} ms = {tot / (tms * 1e6):.1f} GFLOP/s")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.out, "report.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump({"peak_gflops": a.peak, "models": rows, "mobilenetv2_layers": layers}, f, indent=1)
    svg_latency(rows, os.path.join(a.out, "latency.svg"))
    if layers:
        svg_layers(layers, a.peak, os.path.join(a.out, "conv_gflops.svg"))
    print(f"wrote {a.out}/report.txt, report.json, latency.svg, conv_gflops.svg", file=sys.stderr)


if __name__ == "__main__":
    main()
