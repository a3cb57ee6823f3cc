#!/usr/bin/env python3
"""Int8 models, batch 1, one thread: edgeplug's native backend against onnxruntime and
OpenVINO on the same files, timed in alternating rounds; and the digits CNN in int8 against
itself in f32 on the native backend. QDQ models, and QOperator ones (QLinearConv etc.), which
OpenVINO cannot load (reported as such) and which edgeplug also times on tract, where they ran
before the native backend took them.

    target/ort-venv/bin/python host/models/benches/int8_compare.py \
        [--bench "target/release/edgeplug bench"] [--rounds 5] [--runs 200] [--core 1]

Needs a Python with onnxruntime and openvino (compare_ort.sh makes target/ort-venv; add
`pip install openvino`). edgeplug runs through `edgeplug bench --backend native --intra-op 1`
pinned with taskset; onnxruntime and OpenVINO in this process, pinned with sched_setaffinity,
one thread each (onnxruntime without spinning), the same warm-up and runs on the model's
reference input. Also prints each engine's top-1 on the four photos and its largest logit
difference from onnxruntime's int8 reference. Writes target/bench/int8_compare.json.
INT8_COMPARE_ONLY=QOperator (any part of a model's name) times only the models it names.
"""
import json
import os
import pathlib
import shlex
import statistics
import subprocess

import numpy as np
import onnxruntime as ort
import openvino as ov

from bf16_compare import alternated, bench_args, median_ms, time_openvino

ROOT = pathlib.Path(__file__).resolve().parents[3]
# (name, model file, input, onnxruntime int8 reference output)
MODELS = [
    ("mobilenetv2 int8", "plugins/image-classifier/mobilenetv2_int8_qdq.onnx",
     "tests/fixtures/imagenet/mobilenetv2_input.npy", "tests/fixtures/imagenet/mobilenetv2_int8_qdq_ref_out.npy"),
    ("efficientnet_lite0 int8", "plugins/image-classifier/efficientnet_lite0_int8_qdq.onnx",
     "tests/fixtures/imagenet/efficientnet_lite0_input.npy",
     "tests/fixtures/imagenet/efficientnet_lite0_int8_qdq_ref_out.npy"),
    ("digits int8", "tests/fixtures/models/digits_cnn_int8_qdq.onnx", "tests/fixtures/models/digits_test.npy",
     "tests/fixtures/models/digits_cnn_int8_qdq_ref_out.npy"),
    ("digits int8 QOperator", "tests/fixtures/models/digits_cnn_int8_qop.onnx",
     "tests/fixtures/models/digits_test.npy", "tests/fixtures/models/digits_cnn_int8_qop_ref_out.npy"),
    ("mobilenetv2 int8 QOperator", "tests/fixtures/imagenet/mobilenetv2_int8_qop.onnx",
     "tests/fixtures/imagenet/mobilenetv2_input.npy", "tests/fixtures/imagenet/mobilenetv2_int8_qop_ref_out.npy"),
]
DIGITS_F32 = "tests/fixtures/models/digits_cnn.onnx"


def edgeplug(bench, model, npy, runs, core, backend="native"):
    cmd = ["taskset", "-c", str(core)] + shlex.split(bench) + [
        str(ROOT / model), "--backend", backend, "--intra-op", "1", "--runs", str(runs), "--warmup", "20",
        "--input", str(ROOT / npy), "--json"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return out["median_ms"], out.get("precision")


def onnxruntime_session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(ROOT / model), options, providers=["CPUExecutionProvider"])


def time_onnxruntime(session, x, runs):
    name = session.get_inputs()[0].name
    return median_ms(lambda: session.run(None, {name: x}), runs)


def main():
    args = bench_args()
    only = os.environ.get("INT8_COMPARE_ONLY")  # e.g. "QOperator": the models whose name has it
    os.sched_setaffinity(0, {args.core})
    core = ov.Core()
    results = {}
    for name, model, npy, ref in MODELS:
        if only and only not in name:
            continue
        xs = np.load(ROOT / npy).astype(np.float32)
        reference = np.load(ROOT / ref)
        session = onnxruntime_session(model)
        try:
            compiled = core.compile_model(str(ROOT / model), "CPU",
                                          {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY",
                                           "NUM_STREAMS": 1})
            openvino_error = None
        except Exception as e:  # QOperator graphs: OpenVINO has no QLinearConv
            compiled, openvino_error = None, " ".join(str(e).split())[:300]
        engines = {
            "edgeplug native": lambda m=model, n=npy: edgeplug(args.bench, m, n, args.runs, args.core)[0],
            "onnxruntime": lambda s=session: time_onnxruntime(s, xs[:1], args.runs),
        }
        if compiled is not None:
            engines["openvino"] = lambda c=compiled: time_openvino(c, xs[:1], args.runs)
        tract_error = None
        if "QOperator" in name:
            # tract is slow on these: a tenth of the runs (at least 10) per round; and it has
            # no com.microsoft ops (QLinearAdd, QGemm, ...), which it then reports.
            try:
                edgeplug(args.bench, model, npy, 1, args.core, "tract")
                engines["edgeplug tract"] = lambda m=model, n=npy: edgeplug(
                    args.bench, m, n, max(10, args.runs // 10), args.core, "tract")[0]
            except subprocess.CalledProcessError as e:
                tract_error = (e.stderr or e.stdout or "").strip().splitlines()[-1][:200]
        if name.startswith("digits"):
            engines["edgeplug native f32"] = lambda: edgeplug(args.bench, DIGITS_F32, npy, args.runs, args.core)[0]
        samples = alternated(engines, args.rounds)
        rows = min(4, len(xs))
        results[name] = {
            "median_ms": {n: statistics.median(v) for n, v in samples.items()},
            "rounds_ms": samples,
            "precision": edgeplug(args.bench, model, npy, 5, args.core)[1],
            "reference_top1": reference[:rows].argmax(1).tolist(),
        }
        if compiled is not None:
            request = compiled.create_infer_request()
            ov_logits = np.stack([request.infer([xs[i:i + 1]])[0][0] for i in range(rows)])
            results[name]["openvino_top1"] = ov_logits.argmax(1).tolist()
            results[name]["openvino_max_abs_diff"] = float(np.abs(ov_logits - reference[:rows]).max())
        else:
            results[name]["openvino_error"] = openvino_error
        print(f"{name}, one thread, {args.rounds} rounds of {args.runs} runs alternated, medians "
              f"(edgeplug ran {results[name]['precision']}):")
        base_name = "openvino" if compiled is not None else "onnxruntime"
        base = statistics.median(samples[base_name])
        for n, v in samples.items():
            m = statistics.median(v)
            print(f"  {n:<22} {m:7.3f} ms  ({m / base:.2f}x {base_name})  range {min(v):.3f}-{max(v):.3f}")
        if compiled is not None:
            print(f"  top-1 of the first {rows} inputs: onnxruntime {results[name]['reference_top1']}, "
                  f"openvino {results[name]['openvino_top1']} (max |d| {results[name]['openvino_max_abs_diff']:.3f})")
        else:
            print(f"  openvino cannot load it: {openvino_error}")
        if tract_error:
            results[name]["tract_error"] = tract_error
            print(f"  tract cannot run it: {tract_error}")
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_compare.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
