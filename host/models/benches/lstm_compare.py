#!/usr/bin/env python3
"""Sunspots LSTM, batch 1, one thread, one core: edgeplug's native backend,
tract and onnxruntime, timed in alternating blocks within one run, so a
shared machine's slow phases hit every engine alike.

    target/ort-venv/bin/python host/models/benches/lstm_compare.py \
        [--bench "target/release/edgeplug bench"] [--rounds 7] [--runs 2000] [--core 1]

Run it with a Python that has onnxruntime (compare_ort.sh makes
target/ort-venv). Each round times every engine once, in a rotated order:
native and tract through `edgeplug bench` (its protocol: warm-up runs, then
timed runs of one inference on the first test window; median), pinned with
`taskset`; onnxruntime in this process, pinned with sched_setaffinity, one
intra-op thread, ORT_ENABLE_ALL, the same warm-up and runs, both through
`run` (a feed dict) and through `run_with_iobinding` with the input and output
bound once (the way the issue's onnxruntime figure was taken, which spares it
a Python allocation per run). Prints, per engine, the median of the rounds'
medians and their range; writes target/bench/lstm_compare.json.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MODEL = os.path.join(ROOT, "tests/fixtures/models/sunspots_lstm.onnx")
INPUT = os.path.join(ROOT, "tests/fixtures/models/sunspots_test_windows.npy")


def edgeplug(cmd, backend, runs, warmup, core):
    argv = ["taskset", "-c", str(core)] + shlex.split(cmd) + [
        MODEL, "--backend", backend, "--runs", str(runs), "--warmup", str(warmup),
        "--input", INPUT, "--json",
    ]
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])["median_ms"]


class Ort:
    def __init__(self):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.x = np.ascontiguousarray(np.load(INPUT)[:1].astype(np.float32))
        self.feed = {inp.name: self.x}
        self.binding = self.sess.io_binding()
        self.binding.bind_cpu_input(inp.name, self.x)
        out = self.sess.get_outputs()[0]
        self.y = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 1), np.float32))
        self.binding.bind_ortvalue_output(out.name, self.y)

    def time(self, runs, warmup, bound):
        run = (lambda: self.sess.run_with_iobinding(self.binding)) if bound else (
            lambda: self.sess.run(None, self.feed))
        for _ in range(warmup):
            run()
        t = []
        for _ in range(runs):
            s = time.perf_counter()
            run()
            t.append((time.perf_counter() - s) * 1e3)
        return statistics.median(t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(ROOT, "target/release/edgeplug") + " bench")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench/lstm_compare.json"))
    a = ap.parse_args()
    os.sched_setaffinity(0, {a.core})
    o = Ort()
    engines = {
        "native": lambda: edgeplug(a.bench, "native", a.runs, a.warmup, a.core),
        "tract": lambda: edgeplug(a.bench, "tract", a.runs, a.warmup, a.core),
        "onnxruntime (bound)": lambda: o.time(a.runs, a.warmup, True),
        "onnxruntime (run)": lambda: o.time(a.runs, a.warmup, False),
    }
    names = list(engines)
    blocks = {n: [] for n in names}
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            blocks[n].append(engines[n]())
        print(f"round {r + 1}: " + ", ".join(f"{n} {blocks[n][-1]:.4f}" for n in names), file=sys.stderr)
    summary = {
        n: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "blocks_ms": v}
        for n, v in blocks.items()
    }
    ref = summary["onnxruntime (bound)"]["median_ms"]
    print(f"sunspots_lstm, batch 1, 1 thread, core {a.core}, {a.rounds} alternated rounds of "
          f"{a.runs} runs; onnxruntime {ort.__version__}")
    for n, s in summary.items():
        print(f"  {n:<20} median {s['median_ms']:.4f} ms  (rounds {s['min_ms']:.4f}-{s['max_ms']:.4f})"
              f"  {s['median_ms'] / ref:.2f}x onnxruntime (bound)")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"onnxruntime": ort.__version__, "rounds": a.rounds, "runs": a.runs,
                   "warmup": a.warmup, "core": a.core, "engines": summary}, f, indent=1)


if __name__ == "__main__":
    main()
