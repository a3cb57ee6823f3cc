#!/usr/bin/env python3
"""MobileNetV2 and EfficientNet-Lite0, batch 1, one thread: edgeplug's native backend in f32
and in bf16 against OpenVINO at its default precision (its own choice for this CPU: bf16 where
the CPU has AMX or AVX512-BF16) and at f32, timed in alternating rounds of one run.

    target/ort-venv/bin/python host/models/benches/bf16_compare.py \
        [--bench "target/release/edgeplug bench"] [--rounds 5] [--runs 200] [--core 1]

Needs a Python with openvino (`pip install openvino`; compare_ort.sh makes target/ort-venv).
edgeplug runs through `edgeplug bench --intra-op 1 --precision f32|bf16` pinned with taskset,
bf16 on AMX where the CPU has it and once more with `EDGEPLUG_AMX=off` (AVX512-BF16);
OpenVINO in this process, pinned with sched_setaffinity, one inference thread, latency hint,
the same warm-up and runs on the model's reference input. Also prints each engine's top-1 on
the four photos (tests/fixtures/imagenet/*_input.npy) and its largest logit difference from
onnxruntime's f32 reference. Writes target/bench/bf16_compare.json.
"""
import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import time

import numpy as np
import openvino as ov

ROOT = pathlib.Path(__file__).resolve().parents[3]
MODELS = ["mobilenetv2", "efficientnet_lite0"]


def edgeplug(bench, model, precision, runs, core, amx=True):
    env = dict(os.environ, EDGEPLUG_AMX="on" if amx else "off")
    cmd = ["taskset", "-c", str(core)] + shlex.split(bench) + [
        str(ROOT / "tests/fixtures/models" / f"{model}.onnx"), "--intra-op", "1", "--precision", precision,
        "--runs", str(runs), "--warmup", "20", "--input", str(ROOT / f"tests/fixtures/imagenet/{model}_input.npy"),
        "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out)["median_ms"]


def openvino_model(core, model, hint):
    config = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = core.compile_model(str(ROOT / "tests/fixtures/models" / f"{model}.onnx"), "CPU", config)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    return compiled, getattr(precision, "get_type_name", lambda: str(precision))()


def median_ms(call, runs, warmup=20):
    """Median wall time of `call()` in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def alternated(engines, rounds):
    """Each engine's times over `rounds` rounds, every round timing each engine once in a
    rotated order, so a shared machine's slow phases hit every engine alike."""
    samples = {name: [] for name in engines}
    names = list(engines)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(engines[name]())
    return samples


def bench_args():
    """The options every compare script takes: the bench command, rounds, runs and core."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=str(ROOT / "target/release/edgeplug") + " bench")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--core", type=int, default=1)
    return ap.parse_args()


def time_openvino(compiled, x, runs):
    request = compiled.create_infer_request()
    return median_ms(lambda: request.infer([x]), runs)


def main():
    args = bench_args()
    os.sched_setaffinity(0, {args.core})
    core = ov.Core()
    results = {}
    for model in MODELS:
        xs = np.load(ROOT / f"tests/fixtures/imagenet/{model}_input.npy")
        reference = np.load(ROOT / f"tests/fixtures/imagenet/{model}_ref_out.npy")
        default, default_precision = openvino_model(core, model, None)
        f32, _ = openvino_model(core, model, "f32")
        engines = {
            "edgeplug f32": lambda m=model: edgeplug(args.bench, m, "f32", args.runs, args.core),
            "edgeplug bf16": lambda m=model: edgeplug(args.bench, m, "bf16", args.runs, args.core),
            "edgeplug bf16, AMX off": lambda m=model: edgeplug(args.bench, m, "bf16", args.runs, args.core, False),
            f"openvino default ({default_precision})": lambda c=default: time_openvino(c, xs[:1], args.runs),
            "openvino f32": lambda c=f32: time_openvino(c, xs[:1], args.runs),
        }
        samples = alternated(engines, args.rounds)
        top1 = {}
        for name, compiled in [(f"openvino default ({default_precision})", default), ("openvino f32", f32)]:
            request = compiled.create_infer_request()
            logits = np.stack([request.infer([xs[i:i + 1]])[0][0] for i in range(4)])
            top1[name] = {"top1": logits.argmax(1).tolist(),
                          "max_abs_logit_diff": float(np.abs(logits - reference[:4]).max())}
        results[model] = {"median_ms": {n: statistics.median(v) for n, v in samples.items()},
                          "rounds_ms": samples, "openvino_photos": top1,
                          "reference_top1": reference[:4].argmax(1).tolist()}
        print(f"{model}, one thread, {args.rounds} rounds of {args.runs} runs alternated, medians:")
        base = statistics.median(samples[f"openvino default ({default_precision})"])
        for name, v in samples.items():
            m = statistics.median(v)
            print(f"  {name:<28} {m:7.3f} ms  ({m / base:.2f}x OpenVINO default)  range {min(v):.3f}-{max(v):.3f}")
        print(f"  photos' top-1: reference {results[model]['reference_top1']}, "
              + ", ".join(f"{n} {t['top1']} (max |dlogit| {t['max_abs_logit_diff']:.3f})" for n, t in top1.items()))
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16_compare.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
