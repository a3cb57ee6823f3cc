#!/usr/bin/env python3
"""Times ONNX models on onnxruntime, batch 1, one intra-op thread.

Usage: ort_bench.py OUT.json MODEL.onnx[:INPUT.npy] ...

Same protocol as `edgeplug bench`: warm-up runs, then timed runs of one
batch-1 inference (the first row of INPUT.npy, or zeros); reports median and
p90 in milliseconds. Run by compare_ort.sh inside its venv.
"""
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

RUNS = int(os.environ.get("RUNS", "100"))
WARMUP = int(os.environ.get("WARMUP", "10"))


def bench(model, npy):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    if npy:
        x = np.load(npy)[:1].astype(np.float32).reshape(shape)
    else:
        x = np.zeros(shape, np.float32)
    feed = {inp.name: x}
    for _ in range(WARMUP):
        sess.run(None, feed)
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    pct = lambda p: times[round((len(times) - 1) * p)]
    return {
        "model": os.path.splitext(os.path.basename(model))[0],
        "backend": "onnxruntime",
        "version": ort.__version__,
        "threads": 1,
        "runs": RUNS,
        "warmup": WARMUP,
        "median_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "min_ms": times[0],
    }


def main():
    out, specs = sys.argv[1], sys.argv[2:]
    results = []
    for spec in specs:
        model, _, npy = spec.partition(":")
        r = bench(model, npy or None)
        print(f"{r['model']:<22} onnxruntime {r['version']} 1 thread: median {r['median_ms']:.3f} ms", file=sys.stderr)
        results.append(r)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
